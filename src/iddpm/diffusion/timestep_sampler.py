"""Timestep samplers for training: uniform, and importance sampling of L_vlb (docs/paper.md P13).

Both split `weights()` (unnormalised, float64 [T]) from `sample()`, which returns step
indices t and the unbiasing weights 1/(T·p_t): the training loop multiplies each
example's loss by its weight, so E_{t∼p}[w_t L_t] = (1/T) Σ_t L_t, the uniform-sampling
objective, whatever p is.

`update(t, losses)` takes values that are *already gathered* from every rank: in
distributed training each rank must see the same (t, loss) pairs or their distributions
drift apart (P13). This module never imports `torch.distributed`; the trainer gathers.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _check_num_timesteps(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(
            f"number of diffusion steps must be an integer >= 1, got {num_timesteps!r}"
        )


class UniformSampler:
    """t ∼ Uniform{0, …, T−1}; every weight is 1."""

    def __init__(self, num_timesteps: int) -> None:
        _check_num_timesteps(num_timesteps)
        self.num_timesteps = num_timesteps

    def weights(self) -> torch.Tensor:
        """Unnormalised sampling weights, [T] float64 (all ones)."""
        return torch.ones(self.num_timesteps, dtype=torch.float64)

    def probabilities(self) -> torch.Tensor:
        """p_t = weights / Σ weights, [T] float64."""
        w = self.weights()
        return w / w.sum()

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw n steps. Returns (t [n] int64, weights 1/(T·p_t) [n] float32) on `device`.

        generator: a CPU torch.Generator (the draw happens on the CPU, then moves).
        """
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"number of timesteps to draw must be an integer >= 0, got {n!r}")
        p = self.probabilities()
        t = (
            torch.multinomial(p, n, replacement=True, generator=generator)
            if n
            else p.new_zeros(0, dtype=torch.int64)
        )
        w = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), w.to(device=device, dtype=torch.float32)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record gathered per-example losses (nothing to learn for uniform sampling)."""
        _check_update(t, losses, self.num_timesteps)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "uniform", "num_timesteps": self.num_timesteps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, "uniform", self.num_timesteps)


class LossSecondMomentSampler(UniformSampler):
    """(P13) p_t ∝ √E[L_t²] over the last `history` losses of each step, mixed with a
    `uniform_prob` share of uniform probability: p = (1 − u)·p + u/T.

    Until every step has `history` recorded losses the sampler is uniform (warm-up). A
    history that is all zeros (no signal) also gives uniform probabilities.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001) -> None:
        super().__init__(num_timesteps)
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be an integer >= 1, got {history!r}; the paper uses 10")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must be in [0, 1], got {uniform_prob!r}")
        self.history = history
        self.uniform_prob = float(uniform_prob)
        # Ring buffer per step: loss number k of step t lives in column k mod history.
        self.loss_history = torch.zeros(num_timesteps, history, dtype=torch.float64)
        self.loss_counts = torch.zeros(num_timesteps, dtype=torch.int64)

    def warmed_up(self) -> bool:
        """True once every step has `history` recorded losses."""
        return bool((self.loss_counts >= self.history).all())

    def weights(self) -> torch.Tensor:
        """Unnormalised weights [T] float64: ones during warm-up, else the mixed p_t."""
        if not self.warmed_up():
            return torch.ones(self.num_timesteps, dtype=torch.float64)
        rms = self.loss_history.pow(2).mean(dim=1).sqrt()
        total = float(rms.sum())
        if total == 0.0:
            return torch.ones(self.num_timesteps, dtype=torch.float64)
        p = rms / total
        return (1.0 - self.uniform_prob) * p + self.uniform_prob / self.num_timesteps

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Append gathered (t, loss) pairs, in order, to each step's rolling window.

        t: [M] int; losses: [M] float (e.g. the per-example L_t in bits), finite.
        """
        t_list, loss_list = _check_update(t, losses, self.num_timesteps)
        for step, loss in zip(t_list, loss_list):
            col = int(self.loss_counts[step]) % self.history
            self.loss_history[step, col] = loss
            self.loss_counts[step] += 1

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain numbers only: loads with torch.load(weights_only=True)."""
        return {
            "kind": "loss-second-moment",
            "num_timesteps": self.num_timesteps,
            "history": self.history,
            "uniform_prob": self.uniform_prob,
            "loss_history": self.loss_history.clone(),
            "loss_counts": self.loss_counts.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_state(state, "loss-second-moment", self.num_timesteps)
        for name in ("history", "uniform_prob"):
            if state.get(name) != getattr(self, name):
                raise ValueError(
                    f"state has {name}={state.get(name)!r} but this sampler has "
                    f"{getattr(self, name)!r}; build it with {name}={state.get(name)!r}"
                )
        self.loss_history = state["loss_history"].to(torch.float64).clone()
        self.loss_counts = state["loss_counts"].to(torch.int64).clone()


def _check_update(
    t: torch.Tensor, losses: torch.Tensor, num_timesteps: int
) -> tuple[list[int], list[float]]:
    t = torch.as_tensor(t)
    losses = torch.as_tensor(losses)
    if t.ndim != 1 or losses.shape != t.shape:
        raise ValueError(
            f"update needs t and losses as matching 1-d tensors, got shapes {tuple(t.shape)} "
            f"and {tuple(losses.shape)}; pass one loss per example"
        )
    if t.dtype.is_floating_point:
        raise ValueError(f"t must hold integer step indices, got dtype {t.dtype}")
    t_list = [int(v) for v in t.tolist()]
    loss_list = [float(v) for v in losses.detach().to(torch.float64).tolist()]
    if any(not 0 <= v < num_timesteps for v in t_list):
        raise ValueError(
            f"t must lie in [0, {num_timesteps}), got range [{min(t_list)}, {max(t_list)}]"
        )
    if any(not math.isfinite(v) for v in loss_list):
        raise ValueError("losses must be finite; a NaN/inf loss would poison the history")
    return t_list, loss_list


def _check_state(state: dict[str, Any], kind: str, num_timesteps: int) -> None:
    if state.get("kind") != kind:
        raise ValueError(
            f"state is for a {state.get('kind')!r} timestep sampler, not {kind!r}; "
            "build the sampler the checkpoint was trained with"
        )
    if state.get("num_timesteps") != num_timesteps:
        raise ValueError(
            f"state is for {state.get('num_timesteps')} diffusion steps but this sampler has "
            f"{num_timesteps}; build it with the checkpoint's num_timesteps"
        )


__all__ = ["LossSecondMomentSampler", "UniformSampler"]
