"""DPM-Solver++ against closed forms (Lu et al. 2022; iddpm.diffusion.dpm_solver).

Exact reference. For x0 ~ N(mu, s² I) and the exact ε (conftest's `gaussian_oracle`), the
probability-flow ODE in x̄ = x/√ᾱ and σ̄ = √((1 − ᾱ)/ᾱ) is dx̄/dσ̄ = ε̂ = σ̄/(s² + σ̄²)(x̄ − mu),
so x̄ − mu scales by √((s² + σ̄²)/(s² + σ̄_T²)). The solvers' output is x̂0 of the state at
index 0, x̂0 = E[x0 | x] = mu + s²/(s² + σ̄²)(x̄ − mu), so the exact output for a start x_T is

    mu + s² / √((s² + σ̄_0²)(s² + σ̄_T²)) · (x_T/√ᾱ_T − mu).

Every solver here is linear in x_T − (its mean), so its error for one data scale s is one
signed number that may cross zero at some NFE; the order tests therefore take the worst
relative error over a family of data scales (the error of the method on that class of
problems), at fixed starting points, in float64: no Monte-Carlo noise anywhere.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import gaussian_oracle
from iddpm.diffusion import registry, schedules
from iddpm.diffusion.dpm_solver import (
    dpm_solver_pp_steps,
    dpmpp_update,
    half_log_snr,
)
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.respace import parse_steps, respace
from iddpm.diffusion.samplers import ddim, per_sample_generators, run_to_end

MU = 0.3
SCALES = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # data standard deviations s of the oracle family
NFES = (10, 20, 40, 80)
Z = torch.linspace(-3, 3, 8, dtype=torch.float64).reshape(2, 1, 2, 2)  # fixed x_T


def base(schedule: str = "cosine", T: int = 1000, **kw) -> GaussianDiffusion:
    return GaussianDiffusion(schedules.get(schedule, T), **kw)


def process(spec: str, schedule: str = "cosine", **kw) -> GaussianDiffusion:
    b = base(schedule, 1000, **kw)
    return respace(b, parse_steps(spec, 1000, alphas_cumprod=b.alphas_cumprod))[0]


def exact_output(d: GaussianDiffusion, s: float, x_T: torch.Tensor) -> torch.Tensor:
    """x̂0 of the exact probability-flow ODE state at index 0, started from x_T (docstring)."""
    ab = d.alphas_cumprod
    var0, varT = float((1 - ab[0]) / ab[0]), float((1 - ab[-1]) / ab[-1])
    gain = s**2 / math.sqrt((s**2 + var0) * (s**2 + varT))
    return MU + gain * (x_T / ab[-1].sqrt() - MU)


def relative_error(x: torch.Tensor, d: GaussianDiffusion, s: float) -> float:
    ref = exact_output(d, s, Z)
    return float((x - ref).abs().max() / (ref - MU).abs().max())


def solver_error(name: str, d: GaussianDiffusion, s: float, **kw) -> float:
    model = gaussian_oracle(d, MU, s)
    if kw:  # a non-default DPM-Solver++ setting, through the loop itself
        x = run_to_end(dpm_solver_pp_steps(model, d, noise=Z, clip_denoised=False, **kw))
    else:
        x = registry.sample(name, model, d, noise=Z, clip_denoised=False)
    return relative_error(x, d, s)


def worst_errors(name: str, spacing: str) -> list[float]:
    """Worst relative error over SCALES at each NFE, cosine T = 1000 with learned Σ."""
    out = []
    for k in NFES:
        d = process(f"{spacing}{k}", var_type=VarType.LEARNED_RANGE)
        out.append(max(solver_error(name, d, s) for s in SCALES))
    return out


def loglog_slope(errors: list[float]) -> float:
    return float(np.polyfit(np.log(NFES), np.log(errors), 1)[0])


# ---------------------------------------------------------------------- convergence order
def test_dpmpp2m_is_second_order_and_ddim_first_order_on_logsnr_steps() -> None:
    # Log-SNR-uniform steps are uniform in the solvers' variable λ, where the order theory
    # applies. Measured on `logsnrK`'s range (log-SNR 3.2 to −4.6): DDIM −1.02; 2M −2.20
    # (pairwise −2.31, −2.19, −2.10). (On the cosine's whole λ range of 15, before the
    # range was capped: 2M −1.67, pairwise −1.22, −1.78, −1.97.)
    ddim_err = worst_errors("ddim", "logsnr")
    dpm_err = worst_errors("dpmpp2m", "logsnr")
    assert -1.3 <= loglog_slope(ddim_err) <= -0.7, ddim_err
    assert -2.4 <= loglog_slope(dpm_err) <= -1.6, dpm_err
    # the last doubling shows the asymptotic order itself
    last = math.log2(dpm_err[-1] / dpm_err[-2])
    assert -2.3 <= last <= -1.7, dpm_err
    assert all(a < b for a, b in zip(dpm_err, ddim_err))


def test_dpmpp3m_pays_from_40_steps_on_logsnr_steps() -> None:
    # Measured worst errors on `logsnrK`'s range 1.0e-2, 8.8e-4, 9.8e-5, 1.1e-5 (slope
    # −3.3) against 2M's 1.2e-2, 2.4e-3, 5.2e-4, 1.2e-4: 2.7× better at 20 NFE, 5× at 40,
    # 11× at 80. (Over the cosine's whole λ range 3M was worse than 2M up to 20 NFE.)
    err3 = worst_errors("dpmpp3m", "logsnr")
    err2 = worst_errors("dpmpp2m", "logsnr")
    assert loglog_slope(err3) <= -2.6, err3
    assert err3[2] < err2[2] / 3 and err3[3] < err2[3] / 5, (err3, err2)


def test_dpmpp2m_beats_ddim_on_even_steps() -> None:
    # Even spacing in t ends with a long λ-step into index 0, which no order shortens
    # (module docstring); 2M still beats first order from 20 NFE on.
    ddim_err = worst_errors("ddim", "")
    dpm_err = worst_errors("dpmpp2m", "")
    assert all(a < b for a, b in zip(dpm_err[1:], ddim_err[1:])), (dpm_err, ddim_err)
    assert dpm_err[-1] < ddim_err[-1] / 3


@pytest.mark.parametrize("spec", ["10", "logsnr10", "ddim20", "trailing10", "at:0,3,50,400,999"])
def test_first_order_dpm_solver_is_ddim(spec: str) -> None:
    # DPM-Solver++(1) = DDIM(η = 0) exactly: a check of the λ, α, σ bookkeeping.
    d = process(spec, var_type=VarType.FIXED_SMALL)
    model = gaussian_oracle(d, MU, 0.2)
    a = run_to_end(dpm_solver_pp_steps(model, d, noise=Z, clip_denoised=False, order=1))
    b = ddim(model, d, noise=Z, clip_denoised=False)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------- one step
def _abar(lam: float) -> float:
    return 1.0 / (1.0 + math.exp(-2.0 * lam))  # inverse of λ = ½ log(ᾱ/(1 − ᾱ))


def _poly(coeffs: list, lam: float):
    return sum(c * lam**k for k, c in enumerate(coeffs))


def _exact_step(x: torch.Tensor, coeffs: list, lam_s: float, lam_t: float) -> torch.Tensor:
    """x_t = (σ_t/σ_s) x_s + σ_t ∫ e^λ p(λ) dλ for p(λ) = Σ_k coeffs[k] λ^k (degree ≤ 3),
    with the antiderivative ∫ e^λ p = e^λ (p − p′ + p″ − p‴)."""
    derivatives = [list(coeffs)]
    for _ in range(3):
        derivatives.append([k * c for k, c in enumerate(derivatives[-1])][1:] or [0 * coeffs[0]])

    def antiderivative(lam: float) -> torch.Tensor:
        signed = [(-1) ** j * _poly(d, lam) for j, d in enumerate(derivatives)]
        return math.exp(lam) * sum(signed)

    ab_s, ab_t = _abar(lam_s), _abar(lam_t)
    sig_s, sig_t = math.sqrt(1 - ab_s), math.sqrt(1 - ab_t)
    return sig_t / sig_s * x + sig_t * (antiderivative(lam_t) - antiderivative(lam_s))


def _step_error(order: int, degree: int, h: float) -> float:
    """Error of one step of length h from λ_s = 0.3 with history spaced 0.7h, 1.3h apart,
    for x̂0(λ) a polynomial of `degree` with fixed random coefficients."""
    g = torch.Generator().manual_seed(degree)
    poly = [torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64) for _ in range(degree + 1)]
    x = torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64)
    lam_s = 0.3
    past = [lam_s, lam_s - 0.7 * h, lam_s - 2.0 * h][:order]
    preds = [_poly(poly, lam) for lam in past]
    got = dpmpp_update(x, preds, [*past, lam_s + h], _abar(lam_s), _abar(lam_s + h))
    return float((got - _exact_step(x, poly, lam_s, lam_s + h)).abs().max())


@pytest.mark.parametrize("order, degree", [(1, 0), (3, 1), (3, 2)])
def test_update_is_exact_when_x0_is_a_polynomial_it_interpolates(order: int, degree: int) -> None:
    for h in (0.05, 0.5, 2.0):
        assert _step_error(order, degree, h) < 1e-12


@pytest.mark.parametrize("order, degree, power", [(1, 1, 2), (2, 1, 3), (2, 2, 3), (3, 3, 4)])
def test_local_error_has_the_order_of_the_method(order: int, degree: int, power: int) -> None:
    # A method of order p errs by O(h^{p+1}) per step; halving h divides it by 2^{p+1}.
    # (2M's Algorithm-2 weight c₀·h/2 differs from the exact c₁ at O(h³), even for linear x̂0.)
    ratio = _step_error(order, degree, 0.02) / _step_error(order, degree, 0.01)
    assert 2**power * 0.85 < ratio < 2**power * 1.15


# ---------------------------------------------------------------------- the loop
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("spec", ["1", "2", "7", "logsnr12"])
def test_k_steps_make_k_calls_draw_no_noise_and_end_with_x0(order: int, spec: str) -> None:
    d = process(spec, var_type=VarType.LEARNED_RANGE)
    oracle = gaussian_oracle(d, MU, 0.2)
    calls: list[int] = []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(int(t[0]))
        return oracle(x, t)

    gen = per_sample_generators(0, [0, 1])
    steps = list(
        dpm_solver_pp_steps(
            model, d, shape=(2, 1, 2, 2), generator=gen, order=order, dtype=torch.float64
        )
    )
    after_x_T = [g.get_state() for g in gen]
    K = d.num_timesteps
    assert calls == list(range(K - 1, -1, -1))
    assert [s.t for s in steps] == calls
    assert torch.equal(steps[-1].x, steps[-1].pred_x0)
    # the generators were used for x_T only: drawing x_T again leaves them in the same state
    gen2 = per_sample_generators(0, [0, 1])
    for g in gen2:
        torch.randn(1, 2, 2, generator=g, dtype=torch.float64)
    assert all(torch.equal(a, g.get_state()) for a, g in zip(after_x_T, gen2))


def test_the_safeguard_takes_the_last_even_step_at_first_order() -> None:
    d = process("10", var_type=VarType.FIXED_SMALL)
    model = gaussian_oracle(d, MU, 0.5)
    safe = list(dpm_solver_pp_steps(model, d, noise=Z, clip_denoised=False))
    free = list(
        dpm_solver_pp_steps(model, d, noise=Z, clip_denoised=False, max_step_ratio=math.inf)
    )
    # identical up to the state at index 1, which then steps to index 0 at first order
    for a, b in zip(safe[:-2], free[:-2]):
        assert torch.equal(a.x, b.x)
    lam = half_log_snr(d.alphas_cumprod).tolist()
    ab = d.alphas_cumprod.tolist()
    first = dpmpp_update(safe[-3].x, [safe[-2].pred_x0], [lam[1], lam[0]], ab[1], ab[0])
    torch.testing.assert_close(safe[-2].x, first, rtol=0, atol=0)
    assert not torch.equal(free[-2].x, first)


def test_the_safeguard_never_fires_on_uniform_logsnr_steps() -> None:
    d = process("logsnr10", var_type=VarType.FIXED_SMALL)
    model = gaussian_oracle(d, MU, 0.5)
    a = run_to_end(dpm_solver_pp_steps(model, d, noise=Z, clip_denoised=False))
    b = run_to_end(
        dpm_solver_pp_steps(model, d, noise=Z, clip_denoised=False, max_step_ratio=math.inf)
    )
    assert torch.equal(a, b)


@pytest.mark.parametrize("s", [0.2, 0.5, 1.0])
def test_the_safeguard_lowers_the_error_on_even_steps(s: float) -> None:
    # Measured gains 3–30× at 20–80 NFE for s = 0.2–1 (module docstring); 2× is asserted.
    for k in (20, 40, 80):
        d = process(str(k), var_type=VarType.FIXED_SMALL)
        safe = solver_error("dpmpp2m", d, s)
        free = solver_error("dpmpp2m", d, s, order=2, max_step_ratio=math.inf)
        assert safe < free / 2, (k, safe, free)


SWEEP = [(mt, vt) for mt in MeanType for vt in VarType]


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("mean_type, var_type", SWEEP)
def test_every_parameterisation_gives_the_same_samples(
    order: int, mean_type: MeanType, var_type: VarType
) -> None:
    # The oracle encodes the same x̂0 in every output format; learned Σ channels are unused.
    ref_d = base("linear", 40, var_type=VarType.FIXED_SMALL)
    d = base("linear", 40, mean_type=mean_type, var_type=var_type)
    ref = run_to_end(
        dpm_solver_pp_steps(
            gaussian_oracle(ref_d, MU, 0.4), ref_d, noise=Z, clip_denoised=False, order=order
        )
    )
    x = run_to_end(
        dpm_solver_pp_steps(
            gaussian_oracle(d, MU, 0.4), d, noise=Z, clip_denoised=False, order=order
        )
    )
    torch.testing.assert_close(x, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_denoised_clips_every_x0_and_keeps_the_dtype(dtype: torch.dtype) -> None:
    d = base("cosine", 20, mean_type=MeanType.X0, var_type=VarType.FIXED_SMALL)

    def far_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, 5.0)  # predicts x0 = 5, far outside [−1, 1]

    steps = list(dpm_solver_pp_steps(far_model, d, noise=Z.to(dtype), order=3))
    assert all(float(s.pred_x0.max()) == 1.0 for s in steps)
    assert steps[-1].x.dtype == dtype and torch.equal(steps[-1].x, torch.ones_like(Z, dtype=dtype))
    unclipped = run_to_end(dpm_solver_pp_steps(far_model, d, noise=Z, clip_denoised=False))
    assert torch.allclose(unclipped, torch.full_like(Z, 5.0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"order": 4}, "order must be 1, 2 or 3"),
        ({"max_step_ratio": 0.0}, "max_step_ratio must be > 0"),
    ],
)
def test_bad_settings_raise_one_line_errors(kwargs: dict, message: str) -> None:
    d = base("cosine", 5)
    with pytest.raises(ValueError, match=message) as err:
        next(dpm_solver_pp_steps(gaussian_oracle(d, MU, 0.2), d, shape=(1, 1, 2, 2), **kwargs))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------- every sampler
def _options(name: str, d: GaussianDiffusion, model_fn, s: float) -> object:
    """Default options, plus what an entry estimates from data (on the oracle's data)."""
    entry = registry.get(name)
    if entry.from_data is None:
        return registry.make_options(name)
    x0 = MU + s * torch.randn(1024, 1, 2, 2, generator=torch.Generator().manual_seed(7))
    return entry.from_data(model_fn, d, x0)


@pytest.mark.parametrize("name", registry.names())
def test_every_sampler_approaches_the_data_moments_as_nfe_grows(name: str) -> None:
    # 4096 samples × 4 independent dimensions (n = 16384) of x0 ~ N(mu, s²), s = 0.2, even
    # steps of a cosine T = 1000 process with learned Σ. Allowances, derived:
    # - Monte Carlo: 5 standard errors of the mean (s/√n) and of the variance (s²√(2/(n−1)),
    #   scaled by the largest variance allowed);
    # - systematic: the exact chain loses Var[x0 | x at index 0] (its last step returns a
    #   mean), and a first-order solver errs on the variance by about c·s²/K with c = 6.6
    #   for DDIM η = 0 in closed form (test_samplers.ddim_factor); 10·s²/K is allowed, which
    #   shrinks from 100% of s² at 10 NFE to 10% at 100.
    s, n = 0.2, 4096 * 4
    for k in (10, 25, 100):
        d = process(str(k), var_type=VarType.LEARNED_RANGE)
        model = gaussian_oracle(d, MU, s)
        x = registry.sample(
            name,
            model,
            d,
            options=_options(name, d, model, s),
            shape=(4096, 1, 2, 2),
            generator=torch.Generator().manual_seed(100 + k),
            clip_denoised=False,
            dtype=torch.float64,
        ).flatten()
        ab0 = float(d.alphas_cumprod[0])
        lost = s**2 * (1 - ab0) / (ab0 * s**2 + 1 - ab0)
        var_sys = lost + 10 / k * s**2
        tol_mean = 5 * math.sqrt((s**2 + var_sys) / n) + 0.01 * s
        tol_var = 5 * (s**2 + var_sys) * math.sqrt(2 / (n - 1)) + var_sys
        assert abs(float(x.mean()) - MU) < tol_mean, (k, float(x.mean()))
        assert abs(float(x.var()) - s**2) < tol_var, (k, float(x.var()))
