"""The rules of a training run as pure functions, which `Trainer` applies at every step.

How seeds are derived from (seed, step, index) words, how the global batch splits into
per-rank batches and micro-batches, the learning-rate warm-up and annealing, what a loader batch
holds, and which config fields differ between a checkpoint and the current run. None of
them keeps state or touches an RNG; the trainer module docstring says how they combine.
"""

from __future__ import annotations

from typing import Any

import torch

_MASK64 = (1 << 64) - 1


def derive_seed(*words: int) -> int:
    """A 63-bit seed that is a pure function of the integer words (splitmix64 mixing)."""
    h = 0x9E3779B97F4A7C15
    for w in words:
        h = (h ^ (w & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


def split_batch(batch_size: int, world_size: int, microbatch: int) -> tuple[int, int]:
    """(per-rank batch, micro-batch) for a global `batch_size`; one-line error otherwise."""
    unit = world_size * (microbatch or 1)
    if batch_size % unit:
        ranks = f"{world_size} rank{'s' if world_size > 1 else ''}"
        micro = f" × micro-batch {microbatch}" if microbatch else ""
        raise ValueError(
            f"--batch-size {batch_size} is not divisible by {ranks}{micro}; "
            f"use a multiple of {unit}"
        )
    local = batch_size // world_size
    return local, (microbatch or local)


def warmup_lr(base_lr: float, step: int, warmup_steps: int) -> float:
    """Linear warm-up: base_lr·min(1, (step+1)/warmup_steps) for 0-based `step`."""
    if warmup_steps <= 0:
        return base_lr
    return base_lr * min(1.0, (step + 1) / warmup_steps)


def anneal_factor(step: int, anneal_steps: int) -> float:
    """Linear decay to 0: max(0, 1 − step/anneal_steps) for 0-based `step` (1 when off).

    The authors' `_anneal_lr` sets lr·(1 − step/N) before the update of step `step` and
    stops training at N; here the factor stays 0 after N (train with --steps N to stop).
    """
    if anneal_steps <= 0:
        return 1.0
    return max(0.0, 1.0 - step / anneal_steps)


def learning_rate(base_lr: float, step: int, warmup_steps: int, anneal_steps: int) -> float:
    """The lr of 0-based `step`: warm-up and annealing multiply, so a run with both rises
    linearly for `warmup_steps` steps and then follows the decay line towards 0 at
    `anneal_steps`: base_lr·min(1, (step+1)/W)·max(0, 1 − step/N)."""
    return warmup_lr(base_lr, step, warmup_steps) * anneal_factor(step, anneal_steps)


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str) -> list[str]:
    """'prefix.field: saved != current' for every differing field of two config dicts."""
    keys = sorted(set(saved) | set(current))
    return [
        f"{prefix}.{k}: {saved.get(k)!r} != {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


def model_config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`config_differences` of the diffusion and model sections of two ExperimentConfig
    dicts: what a resumed run must keep (other settings may change)."""
    return [
        d
        for section in ("diffusion", "model")
        for d in config_differences(saved[section], current[section], section)
    ]


def unpack_batch(batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """x0 and conditioning from a loader batch: dict(x0=, y=), (x0, y), or a bare x0."""
    if isinstance(batch, dict):
        x0, y = batch["x0"], batch.get("y")
    elif isinstance(batch, (tuple, list)):
        x0, y = batch[0], (batch[1] if len(batch) > 1 else None)
    else:
        x0, y = batch, None
    return x0, ({} if y is None else {"y": y})


# A seed word of its own for the class-dropout draw, so it shares no stream with the
# per-example noise words (example indices) or the t draw (no third word).
CLASS_DROPOUT_WORD = 0xC1A55D0


def drop_labels(
    y: torch.Tensor, p: float, null_label: int, seed: int, step: int, lo: int, global_batch: int
) -> torch.Tensor:
    """Class dropout (Ho & Salimans 2022): this rank's labels y [n] int64 (examples lo …
    lo+n−1 of the global batch), each replaced by `null_label` with probability p. One
    draw for the whole global batch from (seed, step), so the result does not depend on
    the number of ranks; p = 0 returns y unchanged."""
    if p <= 0:
        return y
    gen = torch.Generator().manual_seed(derive_seed(seed, step, CLASS_DROPOUT_WORD))
    drop = torch.rand(global_batch, generator=gen)[lo : lo + y.shape[0]] < p
    return torch.where(drop.to(y.device), torch.full_like(y, null_label), y)
