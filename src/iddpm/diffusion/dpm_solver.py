"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", arXiv 2211.01095), data-prediction form.

Notation, read from `diffusion.alphas_cumprod` at each process index i, so any step spacing
works: α_i = √ᾱ_i, σ_i = √(1 − ᾱ_i), λ_i = log(α_i/σ_i) (half the log-SNR; it grows
towards the data). The probability-flow ODE, written for the data prediction x̂0 = x_θ(x, λ),
has the exact solution from level s to level t (the paper's data-prediction form):

    x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^λ x̂0(λ) dλ,        h = λ_t − λ_s > 0.

Replacing x̂0(λ) by its Taylor polynomial at λ_s, f + f'·u + f''·u²/2 (u = λ − λ_s),
integrates in closed form (σ_t e^{λ_s} = α_t e^{−h}):

    x_t = (σ_t/σ_s) x_s + α_t [c₀ f + c₁ f' + c₂ f''],
    c₀ = 1 − e^{−h},  c₁ = h − 1 + e^{−h},  c₂ = h²/2 − h + 1 − e^{−h}.

The multistep solvers estimate the derivatives from the x̂0 of earlier steps (one network
call per step):
- order 1 (DPM-Solver++ 1 = DDIM η = 0): c₀ f only;
- order 2, "2M" (the paper's Algorithm 2): α_t c₀ [(1 + 1/(2r)) f₀ − 1/(2r) f₁],
  r = h_prev/h, h_prev = λ_s − λ_prev (its second-order term is c₀·h/2 ≈ c₁);
- order 3, "3M": f' and f'' of the quadratic through the last three (λ, x̂0) pairs (Newton
  divided differences), with the exact c₁, c₂ above (an exponential Adams–Bashforth 3 step).

A K-step process runs indices K−1 … 0 with exactly one network call at each, K in all.
The step from index i to i−1 uses order min(order, number of x̂0 evaluated so far), so the
first step is order 1 and, for 3M, the second order 2 (lower order where history is
missing), with one safeguard and one special last call:
- a step more than `max_step_ratio` (default MAX_STEP_RATIO = 2) times as long in λ as the
  previous one is taken at order 1: its extrapolation weight h/(2 h_prev) would exceed 1
  (variable-step multistep methods are only stable for bounded step ratios). On spacings
  even in t this is exactly the last step, into index 0, whose λ-length shrinks only like
  log K (cosine, T = 1000: 3.4 at K = 10, 1.6 at K = 80, 3.3–4.9 times the previous step),
  where extrapolating a saturating x̂0 overshoots. On the Gaussian oracle (cosine, even
  spacing, data scales s = 0.2–1) it lowers 2M's error 1.2–5× at 10 steps and 3–30× at
  20–40 (tests/diffusion/test_dpm_solver.py); for s = 0.1 it costs at 10 steps.
  Log-SNR-uniform spacings do not trigger it except near T−1, where x̂0 barely moves.
  Decided by measurement (issue 20; digits4k, digits-FID of 1000 samples, seed 0, with
  the safeguard / without, `--max-step-ratio inf`): even spacing 5 steps 25.9 / 18.6,
  10 steps 6.32 / 5.97, 20 steps 4.17 / 4.41 (on another digits model: 10 steps 6.49 /
  5.14, 25 steps 5.25 / 5.58); on trailing, `logsnrK` and `karrasK` spacings it never
  fires (10 steps: 5.76 and 3.35 either way). So it is kept as the default where it wins,
  even spacing from ~20 steps, and costs only there below; the few-step spacings
  (dpmpp2m's registered best is `karrasK`) never meet it, and `--max-step-ratio inf`
  gives the published DPM-Solver++ (diffusers' DPMSolverMultistepScheduler).
- the last call, at index 0, returns x̂0 itself, as DDIM does here (its step to ᾱ = 1
  returns x̂0): the order-1 step to the data (σ_t → 0, λ_t → ∞) tends to exactly x̂0, while
  the multistep corrections are undefined as h → ∞. The output is thus "x̂0 of the state at
  index 0", the definition the tests' exact reference uses.

Stochastic variant, SDE-DPM-Solver++ (the paper's SDE solver in data-prediction form;
k-diffusion's `dpmpp_2m_sde`), derived here. With f = d log α/dt and g² = dσ²/dt −
2f σ² = −2σ² dλ/dt, every reverse process

    dx = [f x − ½(1 + η²) g² ∇log p_t(x)] dt + η g dw̄,   ∇log p_t(x) = −(x − α x̂0)/σ²,

has the marginals of the forward process (η = 0: the probability-flow ODE, η = 1: the
reverse SDE). In λ it is linear in x, dx/dλ = (d log α/dλ − κ) x + κ α x̂0 + noise with
κ = 1 + η², so its exact solution from level s to level t (h = λ_t − λ_s) is, by variation
of constants (the transition of the linear part is (α_t/α_s) e^{−κh} = (σ_t/σ_s) e^{−η²h}),

    x_t = (σ_t/σ_s) e^{−η²h} x_s + κ α_t ∫_{λ_s}^{λ_t} e^{−κ(λ_t−λ)} x̂0(λ) dλ
          + σ_t √(1 − e^{−2η²h}) z,                                  z ~ N(0, I),

the noise being the integral of η² g² (σ_t/σ)² e^{−2η²(λ_t−λ)} over the step. For x̂0
frozen at x̂0(x_s) this is the first-order step; at η = 1

    x_t = (σ_t/σ_s) e^{−h} x_s + α_t (1 − e^{−2h}) x̂0 + σ_t √(1 − e^{−2h}) z,

which is the posterior q(x_t | x_s, x0 = x̂0) (mean coefficients and variance β̃ equal after
σ_s²α_t² − α_s²σ_t² = α_t² − α_s²), i.e. DDIM η = 1, as the tests check. Second order adds
the multistep correction of Algorithm 2 with κ in place of 1: α_t (1 − e^{−κh})·h/(2h_prev)·
(x̂0_s − x̂0_prev), the "midpoint" weight (1 − e^{−κh})·h/2 for the exact ∫ κ e^{−κ(h−u)} u du
= h − (1 − e^{−κh})/κ of the "Heun"/Taylor variant (they agree to O(h³)). Midpoint is used
because (a) at η = 0 it is exactly `dpmpp_update`'s 2M, so `eta = 0` reproduces dpmpp2m
bit for bit, and (b) on the Gaussian oracle (cosine, s = 0.1–1, exact moment propagation)
its worst variance error is 1.8–4.4× smaller than Heun's on log-SNR and 1.5–2.2× on
trailing spacing at 10–160 steps; on even spacing Heun is up to 1.25× better at 20–40
steps, midpoint 1.4–2.4× better at 80–160. Measured weak convergence (variance error, worst
over s, logsnr spacing): 31%, 11%, 4.4%, 1.3% of s² at 10/20/40/80 steps (first order: 72%,
50%, 30%, 17%); for s = 1 the error falls 4.0× and 4.3× per doubling from 80 to 320 steps (order 2);
small s level off (0.5% of s² for s = 0.1 from ~300 steps, the same with all 1000 steps:
the base grid's own λ-steps near the data). The same order rule and `max_step_ratio`
safeguard apply (without it the even-spacing error is 2.4–13× larger at 10–80 steps). The
noise is drawn after each network call at t ≥ 1, z from `samplers._randn` (per-sample
generators: row i from generator i only), none at the last call, which returns x̂0. Here η
scales the diffusion coefficient g, as DDIM's η scales its noise: k-diffusion's `eta`
corresponds to η² (the two agree at 0 and 1). On a trained model the noise pays where the
ODE does not: digits4k (cosine T = 1000, learned Σ), digits-FID of 1000 samples, seeds 0/1/2:
dpmpp2m-sde 2.28/2.83/5.24 at 10 NFE, 2.88/2.44/4.76 at 20, 2.07/3.66/5.39 at 50 (trailing:
2.28/2.69/5.11 at 10, 1.87 at 50 for seed 0), against ancestral at 50 steps 3.77/5.23/7.97
and dpmpp2m at 10 6.68/4.64/4.70 (FID of 1000 samples moves by ~2 between seeds: compare
at equal seeds).

x̂0 comes from `diffusion.p_mean_variance(...).pred_x0`, so ε-, x0- and previous-mean models
and learned-Σ models (only the mean channels are used) all work; `clip_denoised` clips x̂0 to
[−1, 1] before it enters the update. The ODE solvers are deterministic: they draw no noise
after x_T. Coefficients are computed in float64 and applied as Python floats, so the sample keeps
its dtype.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from iddpm.diffusion.gaussian import GaussianDiffusion
from iddpm.diffusion.samplers import (
    Denoiser,
    ModelFn,
    NoiseSource,
    SamplerStep,
    drive,
)

MAX_ORDER = 3
MAX_STEP_RATIO = 2.0  # a step longer in λ than this × the previous one is taken at order 1


def half_log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """λ = log(α/σ) = ½(log ᾱ − log(1 − ᾱ)), [K] float64 from ᾱ [K] (−inf where ᾱ = 0)."""
    abar = alphas_cumprod.to(torch.float64)
    return 0.5 * (torch.log(abar) - torch.log1p(-abar))


def dpmpp_update(
    x: torch.Tensor,
    preds: Sequence[torch.Tensor],
    lambdas: Sequence[float],
    abar_s: float,
    abar_t: float,
) -> torch.Tensor:
    """One DPM-Solver++ step from level s to level t (module docstring), of order len(preds).

    x: [N, C, H, W] the state at level s; preds: the x̂0 evaluated at the last 1–3 levels,
    newest first (preds[0] at s), each like x; lambdas: their λ, newest first, then λ_t last
    (len(preds) + 1 floats, increasing towards λ_t); abar_s, abar_t: ᾱ of the two levels.
    Returns the state at level t, like x.
    """
    order = len(preds)
    assert 1 <= order <= MAX_ORDER and len(lambdas) == order + 1
    lam_s, lam_t = lambdas[0], lambdas[-1]
    h = lam_t - lam_s
    ratio = math.sqrt((1.0 - abar_t) / (1.0 - abar_s))  # σ_t/σ_s
    alpha_t = math.sqrt(abar_t)
    c0 = -math.expm1(-h)  # 1 − e^{−h}, without cancellation for small h
    f0 = preds[0]
    if order == 1:
        return ratio * x + (alpha_t * c0) * f0
    a = lam_s - lambdas[1]  # h of the previous step, λ_s − λ_{s−1}
    if order == 2:
        # order 2, Algorithm 2: D = (1 + 1/(2r)) f₀ − 1/(2r) f₁ with r = a/h
        w = h / (2.0 * a)
        return ratio * x + (alpha_t * c0) * ((1.0 + w) * f0 - w * preds[1])
    # order 3: the quadratic through (λ_s, f₀), (λ_s − a, f₁), (λ_s − a − b, f₂), in Newton's
    # divided differences, integrated exactly
    b = lambdas[1] - lambdas[2]
    d01 = (f0 - preds[1]) / a
    d12 = (preds[1] - preds[2]) / b
    d012 = (d01 - d12) / (a + b)
    slope = d01 + a * d012  # p'(λ_s)
    curv = 2.0 * d012  # p''(λ_s)
    c1 = h + math.expm1(-h)  # h − 1 + e^{−h}
    c2 = 0.5 * h * h - c1  # h²/2 − h + 1 − e^{−h}
    return ratio * x + (alpha_t * c0) * f0 + (alpha_t * c1) * slope + (alpha_t * c2) * curv


def _step_order(lam: Sequence[float], t: int, k: int, max_step_ratio: float) -> int:
    """The order of the step from index t to t − 1 with k x̂0 in hand (lower order while the
    history is short): 1 where the step is longer in λ than `max_step_ratio` times the
    previous one (the safeguard against long extrapolation, module docstring), else k."""
    if k > 1 and lam[t - 1] - lam[t] > max_step_ratio * (lam[t] - lam[t + 1]):
        return 1
    return k


def _check_settings(order: int, max_step_ratio: float, max_order: int = MAX_ORDER) -> None:
    if order not in range(1, max_order + 1):
        allowed = ", ".join(str(k) for k in range(1, max_order)) + f" or {max_order}"
        raise ValueError(f"DPM-Solver++ order must be {allowed}, got {order!r}")
    if not max_step_ratio > 0:
        raise ValueError(
            f"max_step_ratio must be > 0, got {max_step_ratio!r}; use math.inf for none"
        )


def dpm_solver_pp_loop(
    denoise: Denoiser,
    x: torch.Tensor,
    noise: NoiseSource,
    *,
    order: int = 2,
    max_step_ratio: float = MAX_STEP_RATIO,
) -> Iterator[SamplerStep]:
    """DPM-Solver++ multistep of `order` 1, 2 ("2M") or 3 ("3M") from x_T = x, t = K−1 … 0.

    A sampler loop (`samplers.SamplerLoop`); `noise` is not used: the solver is
    deterministic after x_T. max_step_ratio: steps longer in λ than this multiple of the
    previous one are taken at order 1 (math.inf: never). Yields one `SamplerStep` per
    network call (K in all): the state at the next index, and at t = 0 the final sample x̂0
    (module docstring).
    """
    _check_settings(order, max_step_ratio)
    yield from _multistep(denoise, x, dpmpp_update, order, max_step_ratio)


def dpm_solver_pp_steps(
    model_fn: ModelFn, diffusion: GaussianDiffusion, **kwargs: Any
) -> Iterator[SamplerStep]:
    """`dpm_solver_pp_loop` from the shared keywords of `samplers.start` and its options."""
    return drive(dpm_solver_pp_loop, model_fn, diffusion, **kwargs)


# The corrector hook of `_multistep`: corrector(x_prev, x, preds, lambdas, abar_s, abar_t)
# -> the corrected state at level t. x_prev: the state at the previous level s, from which
# the last update predicted x (the state at t, where the network was just called); preds:
# x̂0 newest first, preds[0] the new one at t, then those the last update used (at s, …);
# lambdas: λ of the same levels, in the same order; abar_s, abar_t: ᾱ at s and t.
Corrector = Callable[..., torch.Tensor]


def _multistep(
    denoise: Denoiser,
    x: torch.Tensor,
    update: Callable[..., torch.Tensor],
    order: int,
    max_step_ratio: float,
    corrector: Corrector | None = None,
    lower_order_final: bool = False,
) -> Iterator[SamplerStep]:
    """The multistep loop of the solvers from x_T = x: one network call per index, the
    x̂0 history (newest first, at most `order`), the step order (`_step_order`, and with
    `lower_order_final` at most t + 1 for the step from index t, counting the last call's
    step to the data as a step: the last steps fall back to low order as diffusers' UniPC
    does), the optional corrector
    (`Corrector`: after each call but the first and the last it replaces the state just
    predicted, using
    the new x̂0 at no extra call; the next update starts from the corrected state) and
    `update(x, preds, lambdas, abar_s, abar_t)` for the step to the next index."""
    diffusion = denoise.diffusion
    abar = diffusion.alphas_cumprod.tolist()
    lam = half_log_snr(diffusion.alphas_cumprod).tolist()
    preds: list[torch.Tensor] = []  # newest first, at most `order` + 1
    x_prev, k = x, 0  # the state and the order of the last update
    for t in reversed(range(diffusion.num_timesteps)):
        out = denoise(x, t)
        preds = [out.pred_x0, *preds][: order + 1]
        if corrector is not None and k > 0 and t > 0:  # at t = 0 only x̂0 is read
            levels = [lam[t + j] for j in range(k + 1)]
            x = corrector(x_prev, x, preds[: k + 1], levels, abar[t + 1], abar[t])
        if t == 0:
            # the step to the data (λ → ∞) is x̂0 itself; see the module docstring
            yield SamplerStep(t, out.pred_x0, out.pred_x0)
            return
        k = _step_order(lam, t, min(len(preds), order), max_step_ratio)
        if lower_order_final:
            k = min(k, t + 1)
        lambdas = [lam[t + j] for j in range(k)] + [lam[t - 1]]
        x_prev, x = x, update(x, preds[:k], lambdas, abar[t], abar[t - 1])
        yield SamplerStep(t, x, out.pred_x0)


# ---------------------------------------------------------------------- the SDE variant
def sde_dpmpp_update(
    x: torch.Tensor,
    preds: Sequence[torch.Tensor],
    lambdas: Sequence[float],
    abar_s: float,
    abar_t: float,
    noise: torch.Tensor | None,
    eta: float = 1.0,
) -> torch.Tensor:
    """One SDE-DPM-Solver++ step from level s to level t, of order len(preds) (1 or 2).

    x, preds, lambdas, abar_s, abar_t as in `dpmpp_update` (at most two x̂0); noise: z ~ N(0, I)
    like x (unused, may be None, for eta = 0); eta ≥ 0: the noise scale (module docstring,
    "Stochastic variant"). Returns the state at level t, like x.
    """
    order = len(preds)
    assert order in (1, 2) and len(lambdas) == order + 1
    h = lambdas[-1] - lambdas[0]
    kappa = 1.0 + eta * eta
    # Φ = (σ_t/σ_s) e^{−η²h}: exactly σ_t/σ_s for eta = 0, so that eta = 0 is `dpmpp_update`
    ratio = math.sqrt((1.0 - abar_t) / (1.0 - abar_s)) * math.exp(-eta * eta * h)
    alpha_t = math.sqrt(abar_t)
    c0 = -math.expm1(-kappa * h)  # 1 − e^{−κh}
    f0 = preds[0]
    if order == 1:
        x = ratio * x + (alpha_t * c0) * f0
    else:
        w = h / (2.0 * (lambdas[0] - lambdas[1]))  # h/(2 h_prev), as in Algorithm 2
        x = ratio * x + (alpha_t * c0) * ((1.0 + w) * f0 - w * preds[1])
    if eta > 0:
        assert noise is not None, "eta > 0 needs noise"
        x = x + (math.sqrt(1.0 - abar_t) * math.sqrt(-math.expm1(-2.0 * eta * eta * h))) * noise
    return x


def sde_dpm_solver_pp_loop(
    denoise: Denoiser,
    x: torch.Tensor,
    noise: NoiseSource,
    *,
    eta: float = 1.0,
    order: int = 2,
    max_step_ratio: float = MAX_STEP_RATIO,
) -> Iterator[SamplerStep]:
    """SDE-DPM-Solver++ multistep of `order` 1 or 2 ("2M") from x_T = x, t = K−1 … 0.

    A sampler loop (`samplers.SamplerLoop`); eta ≥ 0 the noise scale (0: the deterministic
    `dpm_solver_pp_loop`, 1: the reverse SDE); order and max_step_ratio as in
    `dpm_solver_pp_loop`. One network call per step (K in all); each step to an index
    t − 1 ≥ 0 draws z from `noise` (per-sample generators: row i from generator i); the
    last call, at index 0, yields x̂0 and draws nothing.
    """
    _check_settings(order, max_step_ratio, max_order=2)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}; 0 is deterministic")

    def update(x: torch.Tensor, preds: Sequence[torch.Tensor], *levels: Any) -> torch.Tensor:
        z = noise(x) if eta > 0 else None
        return sde_dpmpp_update(x, preds, *levels, z, eta)

    yield from _multistep(denoise, x, update, order, max_step_ratio)


def sde_dpm_solver_pp_steps(
    model_fn: ModelFn, diffusion: GaussianDiffusion, **kwargs: Any
) -> Iterator[SamplerStep]:
    """`sde_dpm_solver_pp_loop` from the shared keywords of `samplers.start` and its
    options."""
    return drive(sde_dpm_solver_pp_loop, model_fn, diffusion, **kwargs)


# One help text for the option every DPM-Solver++ entry shares (the CLI joins differing ones).
MAX_STEP_RATIO_HELP = (
    "dpmpp*: a step longer in lambda than this times the previous one is taken at first "
    "order (inf: never)"
)


@dataclass(frozen=True)
class DPMOptions:
    """DPM-Solver++ multistep: the long-step safeguard (module docstring)."""

    max_step_ratio: float = dataclasses.field(
        default=MAX_STEP_RATIO,
        metadata={"help": MAX_STEP_RATIO_HELP},
    )

    def __post_init__(self) -> None:
        if self.max_step_ratio is None:  # inf as JSON writes it (null): no safeguard
            object.__setattr__(self, "max_step_ratio", math.inf)
        if not float(self.max_step_ratio) > 0:
            raise ValueError(
                f"--max-step-ratio {self.max_step_ratio} must be > 0 (inf: no safeguard)"
            )


@dataclass(frozen=True)
class SDEOptions:
    """SDE-DPM-Solver++(2M): eta scales the noise of the reverse SDE (0 = `dpmpp2m`)."""

    eta: float = dataclasses.field(
        default=1.0,
        metadata={"help": "noise scale eta >= 0 (dpmpp2m-sde: 1 = the reverse SDE, 0 = dpmpp2m)"},
    )
    max_step_ratio: float = dataclasses.field(
        default=MAX_STEP_RATIO,
        metadata={"help": MAX_STEP_RATIO_HELP},
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(float(self.eta)) and float(self.eta) >= 0):
            raise ValueError(
                f"--eta {self.eta} is not a finite number >= 0; 0 is deterministic, 1 the SDE"
            )
        object.__setattr__(self, "max_step_ratio", DPMOptions(self.max_step_ratio).max_step_ratio)


def dpmpp_2m_sde_loop(
    denoise: Denoiser, x: torch.Tensor, noise: NoiseSource, **options: Any
) -> Iterator[SamplerStep]:
    """SDE-DPM-Solver++(2M) (`sde_dpm_solver_pp_loop` with order 2)."""
    return sde_dpm_solver_pp_loop(denoise, x, noise, order=2, **options)


def dpmpp_2m_loop(
    denoise: Denoiser, x: torch.Tensor, noise: NoiseSource, **options: Any
) -> Iterator[SamplerStep]:
    """DPM-Solver++(2M), the paper's Algorithm 2 (`dpm_solver_pp_loop` with order 2)."""
    return dpm_solver_pp_loop(denoise, x, noise, order=2, **options)


def dpmpp_3m_loop(
    denoise: Denoiser, x: torch.Tensor, noise: NoiseSource, **options: Any
) -> Iterator[SamplerStep]:
    """Third-order multistep DPM-Solver++ (`dpm_solver_pp_loop` with order 3)."""
    return dpm_solver_pp_loop(denoise, x, noise, order=3, **options)


__all__ = [
    "Corrector",
    "DPMOptions",
    "SDEOptions",
    "dpm_solver_pp_loop",
    "dpm_solver_pp_steps",
    "dpmpp_2m_loop",
    "dpmpp_2m_sde_loop",
    "dpmpp_3m_loop",
    "dpmpp_update",
    "half_log_snr",
    "sde_dpm_solver_pp_loop",
    "sde_dpm_solver_pp_steps",
    "sde_dpmpp_update",
]
