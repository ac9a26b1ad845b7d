"""SDE-DPM-Solver++ against closed forms (iddpm.diffusion.dpm_solver, "Stochastic variant").

Exact reference. For x0 ~ N(mu, s² I) and the exact ε (conftest's `gaussian_oracle`), the
reverse processes of the η-family are linear; in x̄ = x/√ᾱ, σ̄² = (1 − ᾱ)/ᾱ the deviation
y = x̄ − mu has dy = κ σ̄ y/(s² + σ̄²) dσ̄ + η √(2σ̄) dw̄ (κ = 1 + η²), whose mean scales by
ρ^{κ/2} and whose variance excess over s² + σ̄² by ρ^κ, ρ = (s² + σ̄_0²)/(s² + σ̄_T²), from
index T−1 to index 0. Started from x_T ~ N(0, 1) (mean −mu, variance excess 1 − s² in y)
and ending with x̂0 = mu + g y, g = s²/(s² + σ̄_0²), the exact output has

    mean mu − mu g ρ^{κ/2},   variance g² ((s² + σ̄_0²) + (1 − s²) ρ^κ).

The solver is linear in (x_T, z_1, …, z_{K−1}) when mu = 0, so running its own loop on a
state that holds the coefficients of those variables (x_T = e_0, the j-th noise draw = e_j)
gives its output variance exactly: the sum of the squared coefficients. The weak
convergence tests use that, with no Monte-Carlo noise; the Monte-Carlo tests tie the real
random draws to it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from conftest import gaussian_oracle
from iddpm.diffusion import registry, schedules
from iddpm.diffusion.dpm_solver import (
    SDEOptions,
    sde_dpm_solver_pp_loop,
    sde_dpm_solver_pp_steps,
    sde_dpmpp_update,
)
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.respace import parse_steps, respace
from iddpm.diffusion.samplers import Denoiser, ddim, per_sample_generators, run_to_end

MU = 0.3
SCALES = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # data standard deviations s of the oracle family
NFES = (10, 20, 40, 80)
Z = torch.linspace(-3, 3, 8, dtype=torch.float64).reshape(2, 1, 2, 2)  # a fixed x_T


def process(spec: str, var_type: VarType = VarType.LEARNED_RANGE) -> GaussianDiffusion:
    b = GaussianDiffusion(schedules.get("cosine", 1000), var_type=var_type)
    return respace(b, parse_steps(spec, 1000, alphas_cumprod=b.alphas_cumprod))[0]


def exact_moments(d: GaussianDiffusion, mu: float, s: float, eta: float) -> tuple[float, float]:
    """Mean and variance of the exact η-process's output from x_T ~ N(0, 1) (docstring)."""
    ab = d.alphas_cumprod
    var0, varT = float((1 - ab[0]) / ab[0]), float((1 - ab[-1]) / ab[-1])
    kappa = 1.0 + eta * eta
    rho = (s**2 + var0) / (s**2 + varT)
    g = s**2 / (s**2 + var0)
    return mu - mu * g * rho ** (kappa / 2), g**2 * ((s**2 + var0) + (1 - s**2) * rho**kappa)


def solver_variance(d: GaussianDiffusion, s: float, **kw) -> float:
    """The solver's exact output variance for x0 ~ N(0, s²), through its own loop (docstring):
    the loop's noise source hands out unit vectors, one dimension per draw."""
    K = d.num_timesteps
    basis = torch.eye(K, dtype=torch.float64)
    draws = iter(range(1, K))

    def unit_noise(like: torch.Tensor) -> torch.Tensor:
        return basis[next(draws)].reshape(like.shape)

    denoise = Denoiser(gaussian_oracle(d, 0.0, s), d, clip_denoised=False)
    x = run_to_end(sde_dpm_solver_pp_loop(denoise, basis[0].reshape(1, 1, 1, K), unit_noise, **kw))
    assert next(draws, None) is None  # K − 1 noise draws, all used
    return float((x**2).sum())


def worst_variance_errors(spacing: str, **kw) -> list[float]:
    """Worst |Var error|/s² over SCALES at each NFE (cosine T = 1000, learned Σ)."""
    out = []
    for k in NFES:
        d = process(f"{spacing}{k}")
        errs = [
            abs(solver_variance(d, s, **kw) - exact_moments(d, 0.0, s, 1.0)[1]) / s**2
            for s in SCALES
        ]
        out.append(max(errs))
    return out


def loglog_slope(errors: list[float]) -> float:
    return float(np.polyfit(np.log(NFES), np.log(errors), 1)[0])


# ---------------------------------------------------------------------- limits and special cases
@pytest.mark.parametrize("spec", ["10", "trailing10", "logsnr12", "at:0,3,50,400,999"])
def test_eta_zero_is_dpmpp2m_exactly(spec: str) -> None:
    d = process(spec)
    model = gaussian_oracle(d, MU, 0.3)
    common = {"shape": (2, 1, 2, 2), "clip_denoised": False, "dtype": torch.float64}
    gen = per_sample_generators(0, [0, 1])
    sde = registry.sample(
        "dpmpp2m-sde", model, d, options=SDEOptions(eta=0.0), generator=gen, **common
    )
    ode = registry.sample("dpmpp2m", model, d, generator=per_sample_generators(0, [0, 1]), **common)
    assert torch.equal(sde, ode)
    # eta = 0 draws nothing after x_T
    fresh = per_sample_generators(0, [0, 1])
    for g in fresh:
        torch.randn(1, 2, 2, generator=g, dtype=torch.float64)
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(gen, fresh))


@pytest.mark.parametrize("spec", ["10", "trailing10", "logsnr12", "at:0,3,50,400,999"])
def test_first_order_at_eta_one_is_ddim_eta_one(spec: str) -> None:
    # The first-order step is the posterior q(x_{t−1} | x_t, x̂0), as DDIM(η = 1) is
    # (module docstring): with the same generators the samples agree to rounding.
    d = process(spec)
    model = gaussian_oracle(d, MU, 0.3)
    a = run_to_end(
        sde_dpm_solver_pp_steps(
            model,
            d,
            noise=Z,
            generator=per_sample_generators(1, [0, 1]),
            order=1,
            clip_denoised=False,
        )
    )
    b = ddim(
        model, d, noise=Z, generator=per_sample_generators(1, [0, 1]), eta=1.0, clip_denoised=False
    )
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------- one step
@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0])
def test_one_first_order_step_has_the_closed_form_moments(eta: float) -> None:
    # From a fixed x_s (index 2, t = 450) one step to index 1 (t = 400), order 1 (no history):
    # x_t ~ N((σ_t/σ_s) e^{−η²h} x_s + α_t (1 − e^{−κh}) x̂0, σ_t² (1 − e^{−2η²h})).
    # n = 40000 draws; 5 standard errors of the mean and of the variance.
    d = process("at:0,400,450")
    n, x_s = 40000, 0.7
    model = gaussian_oracle(d, MU, 0.4)
    steps = sde_dpm_solver_pp_steps(
        model,
        d,
        noise=torch.full((n, 1, 1, 1), x_s, dtype=torch.float64),
        generator=torch.Generator().manual_seed(5),
        clip_denoised=False,
        eta=eta,
    )
    first = next(steps)
    x0_hat = float(first.pred_x0[0])
    ab_s, ab_t = float(d.alphas_cumprod[2]), float(d.alphas_cumprod[1])
    lam_s, lam_t = (0.5 * math.log(a / (1 - a)) for a in (ab_s, ab_t))
    h, kappa = lam_t - lam_s, 1 + eta**2
    mean = math.sqrt((1 - ab_t) / (1 - ab_s)) * math.exp(-(eta**2) * h) * x_s
    mean += math.sqrt(ab_t) * (1 - math.exp(-kappa * h)) * x0_hat
    var = (1 - ab_t) * (1 - math.exp(-2 * eta**2 * h))
    x = first.x.flatten()
    assert abs(float(x.mean()) - mean) < 5 * math.sqrt(var / n)
    assert abs(float(x.var()) - var) < 5 * var * math.sqrt(2 / (n - 1))
    if eta == 1.0:  # ... which is the posterior q(x_t | x_s, x̂0) of P-equations' tables
        q_mean, q_var, _ = d.q_posterior(
            first.pred_x0[:1],
            torch.full((1, 1, 1, 1), x_s, dtype=torch.float64),
            torch.tensor([2]),
        )
        assert math.isclose(float(q_mean), mean, rel_tol=1e-10)
        assert math.isclose(float(q_var), var, rel_tol=1e-10)


def _abar(lam: float) -> float:
    return 1.0 / (1.0 + math.exp(-2.0 * lam))  # inverse of λ = ½ log(ᾱ/(1 − ᾱ))


def _drift_error(eta: float, order: int, coeffs: list[float], h: float) -> float:
    """|error| of one noise-free step of length h from λ_s = 0.3 (history 0.7h back) for
    x̂0(λ) = Σ_k coeffs[k] (λ − λ_s)^k, against κ α_t ∫ e^{−κ(λ_t−λ)} x̂0(λ) dλ + Φ x_s,
    integrated exactly: ∫_0^h κ e^{−κ(h−u)} u^k du by the recursion I_k = h^k − (k/κ) I_{k−1}."""
    kappa, lam_s = 1 + eta**2, 0.3
    lam_t = lam_s + h
    x_s = 0.4
    integrals = [-math.expm1(-kappa * h)]
    for k in range(1, len(coeffs)):
        integrals.append(h**k - k / kappa * integrals[-1])
    ab_s, ab_t = _abar(lam_s), _abar(lam_t)
    exact = math.sqrt((1 - ab_t) / (1 - ab_s)) * math.exp(-(eta**2) * h) * x_s
    exact += math.sqrt(ab_t) * sum(c * i for c, i in zip(coeffs, integrals))
    past = [0.0, -0.7 * h][:order]
    f64 = torch.float64
    preds = [torch.tensor(sum(c * u**k for k, c in enumerate(coeffs)), dtype=f64) for u in past]
    lambdas = [lam_s + u for u in past] + [lam_t]
    zero = torch.tensor(0.0, dtype=f64)
    got = sde_dpmpp_update(torch.tensor(x_s, dtype=f64), preds, lambdas, ab_s, ab_t, zero, eta)
    return abs(float(got) - exact)


@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0])
def test_the_drift_is_exact_for_constant_x0_and_second_order_for_smooth_x0(eta: float) -> None:
    assert _drift_error(eta, 1, [0.8], 1.5) < 1e-14
    # order 2 errs by O(h³) per step for linear and quadratic x̂0 (midpoint weight, module
    # docstring): halving h divides the error by 8
    for coeffs in ([0.8, -0.5], [0.8, -0.5, 0.9]):
        ratio = _drift_error(eta, 2, coeffs, 0.02) / _drift_error(eta, 2, coeffs, 0.01)
        assert 8 * 0.85 < ratio < 8 * 1.15, (coeffs, ratio)
    # order 1 errs by O(h²) for linear x̂0
    ratio = _drift_error(eta, 1, [0.8, -0.5], 0.02) / _drift_error(eta, 1, [0.8, -0.5], 0.01)
    assert 4 * 0.85 < ratio < 4 * 1.15


# ---------------------------------------------------------------------- weak convergence
def test_the_output_variance_converges_at_second_order_on_logsnr_steps() -> None:
    # Measured worst errors (share of s²): 2M 31%, 11%, 4.4%, 1.3% (slope −1.54; for s = 1
    # alone the error falls 4× per doubling from 80 steps on); first order 72%, 50%, 30%,
    # 17% (slope −0.70).
    err2 = worst_variance_errors("logsnr")
    err1 = worst_variance_errors("logsnr", order=1)
    assert loglog_slope(err2) <= -1.3, err2
    assert -1.0 <= loglog_slope(err1) <= -0.5, err1
    assert all(a < b for a, b in zip(err2, err1)), (err2, err1)
    assert err2[-1] < err1[-1] / 8


def test_the_output_variance_error_falls_on_even_steps() -> None:
    # Even spacing ends with a long λ-step into index 0, taken at first order (the
    # safeguard); measured 79%, 51%, 21%, 3.8% of s² at 10–80 steps.
    errs = worst_variance_errors("")
    assert all(b < a for a, b in itertools.pairwise(errs)), errs
    assert errs[-1] < 0.1, errs


@pytest.mark.parametrize("k", [10, 20, 50])
def test_sample_moments_match_the_exact_solver_moments_and_the_data(k: int) -> None:
    # 4096 samples × 4 independent dimensions (n = 16384) of x0 ~ N(mu, s²), s = 0.2, even
    # steps. The real random draws reproduce the solver's exact variance (propagated as in
    # the module docstring) within 5 standard errors, and its mean within 5 standard errors
    # of mu (the mean is carried exactly: each step maps mean α_s mu to α_t mu). The exact
    # variance approaches s² less Var[x0 | x at index 0] within the first-order allowance
    # 10·s²/K of the registry's moment tests (measured 53%, 18%, 1% of s²).
    s, n = 0.2, 4096 * 4
    d = process(str(k))
    v_solver = solver_variance(d, s)
    x = registry.sample(
        "dpmpp2m-sde",
        gaussian_oracle(d, MU, s),
        d,
        shape=(4096, 1, 2, 2),
        generator=torch.Generator().manual_seed(k),
        clip_denoised=False,
        dtype=torch.float64,
    ).flatten()
    assert abs(float(x.mean()) - MU) < 5 * math.sqrt(v_solver / n)
    assert abs(float(x.var()) - v_solver) < 5 * v_solver * math.sqrt(2 / (n - 1))
    ab0 = float(d.alphas_cumprod[0])
    lost = s**2 * (1 - ab0) / (ab0 * s**2 + 1 - ab0)
    assert abs(v_solver - (s**2 - lost)) < 10 / k * s**2


# ---------------------------------------------------------------------- the loop
@pytest.mark.parametrize("spec", ["1", "2", "7", "logsnr12"])
def test_k_steps_make_k_calls_draw_k_minus_1_noises_and_end_with_x0(spec: str) -> None:
    d = process(spec)
    oracle = gaussian_oracle(d, MU, 0.2)
    calls: list[int] = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t[0]))
        return oracle(x, t)

    gen = per_sample_generators(0, [0, 1])
    steps = list(
        sde_dpm_solver_pp_steps(model, d, shape=(2, 1, 2, 2), generator=gen, dtype=torch.float64)
    )
    K = d.num_timesteps
    assert calls == list(range(K - 1, -1, -1))
    assert [s.t for s in steps] == calls
    assert torch.equal(steps[-1].x, steps[-1].pred_x0)
    fresh = per_sample_generators(0, [0, 1])
    for g in fresh:  # x_T and one draw per step to an index t − 1 ≥ 0
        for _ in range(K):
            torch.randn(1, 2, 2, generator=g, dtype=torch.float64)
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(gen, fresh))


@pytest.mark.parametrize("mean_type", list(MeanType))
@pytest.mark.parametrize("var_type", list(VarType))
def test_every_parameterisation_gives_the_same_samples(
    mean_type: MeanType, var_type: VarType
) -> None:
    # The oracle encodes the same x̂0 in every output format; learned Σ channels are unused.
    def draw(d: GaussianDiffusion) -> torch.Tensor:
        return run_to_end(
            sde_dpm_solver_pp_steps(
                gaussian_oracle(d, MU, 0.4),
                d,
                noise=Z,
                clip_denoised=False,
                generator=torch.Generator().manual_seed(3),
            )
        )

    ref = draw(GaussianDiffusion(schedules.get("linear", 40), var_type=VarType.FIXED_SMALL))
    x = draw(GaussianDiffusion(schedules.get("linear", 40), mean_type=mean_type, var_type=var_type))
    torch.testing.assert_close(x, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"order": 3}, "order must be 1 or 2"),
        ({"max_step_ratio": 0.0}, "max_step_ratio must be > 0"),
        ({"eta": -0.1}, "eta must be a finite number >= 0"),
        ({"eta": math.nan}, "eta must be a finite number >= 0"),
    ],
)
def test_bad_settings_raise_one_line_errors(kwargs: dict, message: str) -> None:
    d = process("5")
    with pytest.raises(ValueError, match=message) as err:
        next(sde_dpm_solver_pp_steps(gaussian_oracle(d, MU, 0.2), d, shape=(1, 1, 2, 2), **kwargs))
    assert "\n" not in str(err.value)


def test_eta_is_a_typed_validated_option() -> None:
    assert registry.make_options("dpmpp2m-sde").eta == 1.0
    assert registry.make_options("dpmpp2m-sde", {"eta": "0.5"}).eta == 0.5
    with pytest.raises(ValueError, match=r"--eta -1\.0 is not a finite number >= 0"):
        registry.make_options("dpmpp2m-sde", {"eta": "-1"})
    assert "dpmpp2m-sde" in registry.cli_options()["eta"][2]
