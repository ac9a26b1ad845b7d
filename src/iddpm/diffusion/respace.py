"""Strided processes (PAPER.md P14, P15) and the model adapter that maps timesteps.

A strided process keeps a subsequence S of the base steps and rebuilds β from ᾱ at the
kept steps; the model still sees the *original* step indices (optionally rescaled to
[0, 1000)). The adapter below is how every caller turns "index of the process being run"
into what the network was trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

ModelFn = Callable[..., torch.Tensor]


class ModelAdapter:
    """Wrap a network so it can be called as model_fn(x_t, t, **cond) with t the index of
    the process being run.

    timestep_map: [K] int64 original step of each index (None: identity);
    scale: multiply the original step by this before the network sees it (1000/T when
    the model was trained with rescaled timesteps, else 1.0). With scale != 1 the network
    receives float timesteps, as the reference implementation does.
    """

    def __init__(
        self, model: ModelFn, timestep_map: torch.Tensor | None = None, scale: float = 1.0
    ) -> None:
        self.model = model
        self.timestep_map = timestep_map
        self.scale = float(scale)
        self._maps: dict[torch.device, torch.Tensor] = {}

    def original_steps(self, t: torch.Tensor) -> torch.Tensor:
        if self.timestep_map is None:
            return t
        if t.device not in self._maps:
            self._maps[t.device] = self.timestep_map.to(t.device)
        return self._maps[t.device][t]

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        steps = self.original_steps(t)
        if self.scale != 1.0:
            steps = steps.to(torch.float32) * self.scale
        return self.model(x_t, steps, **cond)
