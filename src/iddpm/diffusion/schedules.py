"""Noise schedules: β sequences in float64 (docs/paper.md P4, P5).

Code step t ∈ {0, …, T−1} stands for the paper's step t+1, so `betas[t]` is β_{t+1}.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

NAMES = ("linear", "cosine")
# β_T = 0.02·1000/T must stay below 1 (and at most 0.999, like the cosine clip).
LINEAR_MIN_STEPS = 21


def _check_steps(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(
            f"number of diffusion steps must be an integer >= 1, got {num_timesteps!r}"
        )


def linear(num_timesteps: int) -> torch.Tensor:
    """DDPM's linear β from 1e-4 to 0.02 at T = 1000; both ends scaled by 1000/T (P4).

    Returns [T] float64.
    """
    _check_steps(num_timesteps)
    if num_timesteps < LINEAR_MIN_STEPS:
        raise ValueError(
            f"the linear schedule needs at least {LINEAR_MIN_STEPS} steps (its last beta, "
            f"20/T, must stay below 1), got {num_timesteps}; use more steps or the cosine schedule"
        )
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def betas_from_alpha_bar(
    alpha_bar: Callable[[float], float], num_timesteps: int, max_beta: float = 0.999
) -> torch.Tensor:
    """β_t = 1 − ᾱ(t/T)/ᾱ((t−1)/T), clipped to `max_beta` (P5). `alpha_bar` maps [0, 1] to ᾱ.

    Returns [T] float64.
    """
    _check_steps(num_timesteps)
    betas = [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def cosine(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """The paper's cosine schedule (P5): ᾱ_t = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s))·π/2).

    β_t = 1 − ᾱ_t/ᾱ_{t−1} (the seed's "1 − ᾱ_t/(1 − ᾱ_t)" is erratum E1), at most `max_beta`.
    Since f(0) cancels in the ratio it is not divided out. Returns [T] float64.
    """

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    return betas_from_alpha_bar(f, num_timesteps, max_beta)


def get(name: str, num_timesteps: int) -> torch.Tensor:
    """β sequence by name ("linear" or "cosine"): [T] float64."""
    if name == "linear":
        return linear(num_timesteps)
    if name == "cosine":
        return cosine(num_timesteps)
    raise ValueError(f"unknown noise schedule {name!r}; choose one of: {', '.join(NAMES)}")
