"""The rules of a training run as pure functions, which `Trainer` applies at every step.

How seeds are derived from (seed, step, index) words, how the global batch splits into
per-rank batches and micro-batches, the linear learning-rate warm-up, what a loader batch
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


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str) -> list[str]:
    """'prefix.field: saved != current' for every differing field of two config dicts."""
    keys = sorted(set(saved) | set(current))
    return [
        f"{prefix}.{k}: {saved.get(k)!r} != {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
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
