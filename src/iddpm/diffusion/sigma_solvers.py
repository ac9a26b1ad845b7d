"""Samplers in Karras et al.'s σ-parameterisation (EDM, arXiv 2206.00364): Heun's second
order method, Euler ancestral and iPNDM, the usual few-step baselines of EDM and
k-diffusion, on any (strided) process of this package.

With x̄ = x/√ᾱ and σ = √((1 − ᾱ)/ᾱ) (the "variance exploding" form of the same process),
the probability-flow ODE is dx̄/dσ = d(x̄, σ) = (x̄ − D(x̄, σ))/σ with D = x̂0, the model's
(clipped) data prediction read at the process index of that σ. Every network call is at a
kept index (the model is discrete in time); the loops run the indices K−1 … 0, treat x_T
as the state at index K−1 and, at index 0, return x̂0: the Euler step to σ = 0 is D itself
(EDM's last step). The steps between are:

- `heun`: EDM's Algorithm 1, x̄' = x̄ + (σ_{t−1} − σ_t) d, then
  x̄_{t−1} = x̄ + (σ_{t−1} − σ_t)(d + d(x̄', σ_{t−1}))/2: two calls per step, so K indices
  cost 2K − 1 calls (the step to σ = 0 is Euler, one call). Second order: the global error
  falls like (number of steps)⁻². One exception, for spacings that start at the top of a
  schedule with σ_T ≫ 1 (cosine, T = 1000: σ_T = 2·10⁴; even and trailing spacings
  start there): a step that shrinks σ more than HEUN_MAX_RATIO = 100 times is an Euler
  step (one call). Its trapezoid would add (σ_t/σ_{t−1})·(D_t − D_{t−1})/2, which
  grows without bound (Gaussian oracle, 10 even steps: output variance 0.47 for data
  variance 0.04); the Euler step from such a σ is nearly exact, D barely moving above
  σ ≈ 100. EDM never meets this (σ_max = 80); `karrasK` does not either.
- `euler-ancestral`: k-diffusion's `sample_euler_ancestral`: an Euler step down to
  σ_down, then fresh noise of size σ_up, with σ_up = min(σ_{t−1}, η√(σ_{t−1}²(σ_t² −
  σ_{t−1}²)/σ_t²)) and σ_down = √(σ_{t−1}² − σ_up²) (η = 1: the marginal variance of the
  DDPM posterior). One call per index; noise from the loop's noise source.
- `ipndm`: the improved pseudo-numerical multistep method (Zhang & Chen 2023, "DEIS";
  the few-step baseline of the GITS and AMED papers): Adams–Bashforth in σ on the history
  of d, orders 1 … 4 with lower order while the history is short. With `variable = False`
  (iPNDM as published) the equal-step weights are used whatever the spacing:
  (3, −1)/2, (23, −16, 5)/12, (55, −59, 37, −9)/24; with `variable = True` the weights
  integrate the interpolation polynomial through the actual σ's (exact for polynomial d of
  degree < order; equal to the fixed ones on an even σ grid).

Coefficients are float64 Python numbers, so the sample keeps its dtype.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from iddpm.diffusion.samplers import Denoiser, NoiseSource, SamplerStep

IPNDM_MAX_ORDER = 4
HEUN_MAX_RATIO = 100.0  # a step shrinking σ more than this many times is an Euler step
_AB_WEIGHTS = {  # Adams–Bashforth weights of d_t, d_{t+1}, … for equal steps
    1: (1.0,),
    2: (1.5, -0.5),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


def sigmas(denoise: Denoiser) -> tuple[list[float], list[float]]:
    """(σ, √ᾱ) of every index of the loop's process, as float64 Python lists."""
    abar = denoise.diffusion.alphas_cumprod
    return ((1.0 - abar) / abar).sqrt().tolist(), abar.sqrt().tolist()


def _slope(denoise: Denoiser, xbar: torch.Tensor, t: int, sig: float, amp: float):
    """(d = (x̄ − D)/σ at index t, the network's output there)."""
    out = denoise(amp * xbar, t)
    return (xbar - out.pred_x0) / sig, out


def heun_loop(denoise: Denoiser, x: torch.Tensor, noise: NoiseSource) -> Iterator[SamplerStep]:
    """EDM's deterministic Heun sampler from x_T = x (module docstring); 2K − 1 calls."""
    sig, amp = sigmas(denoise)
    xbar = x / amp[-1]
    for t in reversed(range(1, len(sig))):
        d, out = _slope(denoise, xbar, t, sig[t], amp[t])
        h = sig[t - 1] - sig[t]
        if sig[t] > HEUN_MAX_RATIO * sig[t - 1]:
            xbar = xbar + h * d  # Euler: the trapezoid would scale D's change by σ_t/σ_{t−1}
        else:
            d2, _ = _slope(denoise, xbar + h * d, t - 1, sig[t - 1], amp[t - 1])
            xbar = xbar + (0.5 * h) * (d + d2)
        yield SamplerStep(t, amp[t - 1] * xbar, out.pred_x0)
    out = denoise(amp[0] * xbar, 0)
    yield SamplerStep(0, out.pred_x0, out.pred_x0)


@dataclass(frozen=True)
class EulerAncestralOptions:
    """Euler ancestral: eta scales the noise (0: the Euler ODE step = DDIM)."""

    eta: float = dataclasses.field(
        default=1.0, metadata={"help": "euler-ancestral: noise scale eta in [0, 1]"}
    )

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(f"--eta {self.eta} is outside [0, 1]; 0 is deterministic")


def euler_ancestral_loop(
    denoise: Denoiser, x: torch.Tensor, noise: NoiseSource, *, eta: float = 1.0
) -> Iterator[SamplerStep]:
    """k-diffusion's Euler ancestral sampler from x_T = x (module docstring); K calls."""
    EulerAncestralOptions(eta)
    sig, amp = sigmas(denoise)
    xbar = x / amp[-1]
    for t in reversed(range(1, len(sig))):
        d, out = _slope(denoise, xbar, t, sig[t], amp[t])
        s, s_next = sig[t], sig[t - 1]
        up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
        down = math.sqrt(s_next**2 - up**2)
        xbar = xbar + (down - s) * d
        if up > 0:
            xbar = xbar + up * noise(xbar)
        yield SamplerStep(t, amp[t - 1] * xbar, out.pred_x0)
    out = denoise(amp[0] * xbar, 0)
    yield SamplerStep(0, out.pred_x0, out.pred_x0)


def variable_weights(nodes: Sequence[float], lo: float, hi: float) -> list[float]:
    """Weights w_j with Σ w_j f(nodes[j]) = ∫_lo^hi p(σ) dσ / (hi − lo), p the polynomial
    through (nodes[j], f(nodes[j])): variable-step Adams–Bashforth, float64."""
    k = len(nodes)
    if k == 1:
        return [1.0]
    # shift and scale for conditioning: u = (σ − nodes[0]) / (hi − lo)
    u = [(n - nodes[0]) / (hi - lo) for n in nodes]
    a, b = (lo - nodes[0]) / (hi - lo), (hi - nodes[0]) / (hi - lo)
    out = []
    for j in range(k):
        coef = np.polynomial.polynomial.polyfit(u, np.eye(k)[j], k - 1)
        integral = np.polynomial.polynomial.polyint(coef)
        val = np.polynomial.polynomial.polyval(b, integral)
        out.append(float(val - np.polynomial.polynomial.polyval(a, integral)))
    return out


@dataclass(frozen=True)
class IPNDMOptions:
    """iPNDM: the multistep order and whether the weights follow the actual step sizes."""

    order: int = dataclasses.field(default=4, metadata={"help": "ipndm: Adams-Bashforth order 1-4"})
    variable: bool = dataclasses.field(
        default=False,
        metadata={"help": "ipndm: weights from the actual sigma steps (iPNDM-v)"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.order, bool) or self.order not in range(1, IPNDM_MAX_ORDER + 1):
            raise ValueError(f"--order {self.order!r} is not supported by ipndm; use 1 to 4")


def ipndm_loop(
    denoise: Denoiser,
    x: torch.Tensor,
    noise: NoiseSource,
    *,
    order: int = 4,
    variable: bool = False,
) -> Iterator[SamplerStep]:
    """iPNDM from x_T = x (module docstring): deterministic, one call per index, K in all."""
    IPNDMOptions(order, variable)
    sig, amp = sigmas(denoise)
    xbar = x / amp[-1]
    ds: list[torch.Tensor] = []  # d at indices t, t + 1, …, newest first
    for t in reversed(range(1, len(sig))):
        d, out = _slope(denoise, xbar, t, sig[t], amp[t])
        ds = [d, *ds][:order]
        k = len(ds)
        if variable:
            weights = variable_weights([sig[t + j] for j in range(k)], sig[t], sig[t - 1])
        else:
            weights = list(_AB_WEIGHTS[k])
        h = sig[t - 1] - sig[t]
        for w, dj in zip(weights, ds):
            xbar = xbar + (h * w) * dj
        yield SamplerStep(t, amp[t - 1] * xbar, out.pred_x0)
    out = denoise(amp[0] * xbar, 0)
    yield SamplerStep(0, out.pred_x0, out.pred_x0)


def heun_calls(steps: int) -> int:
    """Network calls of `heun_loop` for a process of `steps` indices: 2K − 1 (one fewer
    for each Euler step from an extreme σ, see the module docstring)."""
    return 2 * steps - 1


__all__ = [
    "EulerAncestralOptions",
    "IPNDMOptions",
    "euler_ancestral_loop",
    "heun_calls",
    "heun_loop",
    "ipndm_loop",
    "sigmas",
    "variable_weights",
]
