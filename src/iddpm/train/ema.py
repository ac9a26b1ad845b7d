"""Exponential moving averages of a model's parameters at one or more rates.

After every optimizer step, for each rate r: shadow ← r·shadow + (1 − r)·θ. The paper
evaluates the 0.9999 average (docs/paper.md, "The network"). Shadows are float32 copies
whatever the model's dtype, initialised to the parameters at construction, as in the
reference implementation. Only parameters are averaged; buffers are taken from the live
model when weights are exported.

Warm-up (off by default, as in the reference): at optimizer step k the rate used is
min(r, (1 + k)/(10 + k)), so a short run's average is not dominated by its random
initial weights (with r = 0.999 and no warm-up, 30% of the average after 1,200 steps is
still the initialisation). Long runs are unaffected: the cap exceeds 0.9999 after ~90K
steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def rate_key(rate: float) -> str:
    """The state-dict key of a rate: str(float), e.g. '0.9999'."""
    return str(float(rate))


class EMA:
    """Float32 parameter averages of `model` at each of `rates` (each in [0, 1))."""

    def __init__(self, model: nn.Module, rates: Sequence[float], warmup: bool = False) -> None:
        if not rates or any(not 0.0 <= float(r) < 1.0 for r in rates):
            raise ValueError(f"EMA rates must be values in [0, 1), got {list(rates)!r}")
        self.rates = tuple(float(r) for r in rates)
        self.warmup = warmup
        if len(set(self.rates)) != len(self.rates):
            raise ValueError(f"EMA rates must be distinct, got {list(rates)!r}")
        params = {n: p.detach().to(torch.float32).clone() for n, p in model.named_parameters()}
        self.shadows: dict[float, dict[str, torch.Tensor]] = {
            r: {n: v.clone() for n, v in params.items()} for r in self.rates
        }

    def effective_rate(self, rate: float, step: int | None) -> float:
        """The rate applied at optimizer step `step` (0-based): capped during warm-up."""
        if not self.warmup or step is None:
            return rate
        return min(rate, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        """One averaging step from `model`'s current parameters (call after optimizer.step);
        `step` is the 0-based optimizer step, used by the warm-up."""
        current = dict(model.named_parameters())
        for base_rate, shadow in self.shadows.items():
            rate = self.effective_rate(base_rate, step)
            for name, avg in shadow.items():
                # lerp: avg + (1 − r)(θ − avg) = r·avg + (1 − r)·θ
                avg.lerp_(current[name].detach().to(torch.float32), 1.0 - rate)

    def averaged(self, rate: float) -> dict[str, torch.Tensor]:
        """{parameter name: float32 average} for one of the rates."""
        if float(rate) not in self.shadows:
            raise ValueError(f"no EMA at rate {rate}; available rates: {list(self.rates)}")
        return self.shadows[float(rate)]

    @torch.no_grad()
    def copy_to(self, model: nn.Module, rate: float) -> None:
        """Overwrite `model`'s parameters with the average at `rate` (cast to their dtype)."""
        shadow = self.averaged(rate)
        for name, p in model.named_parameters():
            p.copy_(shadow[name].to(p.dtype))

    def to(self, device: torch.device | str) -> EMA:
        for shadow in self.shadows.values():
            for name, v in shadow.items():
                shadow[name] = v.to(device)
        return self

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """{rate_key(rate): {parameter name: float32 tensor}} (the checkpoint's `ema`)."""
        return {rate_key(r): dict(s) for r, s in self.shadows.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Copy saved averages in place; the rates and parameter names must match."""
        want = sorted(rate_key(r) for r in self.rates)
        if sorted(state) != want:
            raise ValueError(
                f"saved EMA rates {sorted(state)} differ from this run's {want}; "
                "use the same ema_rates to resume"
            )
        for rate, shadow in self.shadows.items():
            saved = state[rate_key(rate)]
            if set(saved) != set(shadow):
                missing = sorted(set(shadow) ^ set(saved))[:3]
                raise ValueError(
                    f"saved EMA parameters differ from the model's (e.g. {missing}); "
                    "resume with the same model config"
                )
            for name, avg in shadow.items():
                avg.copy_(saved[name])
