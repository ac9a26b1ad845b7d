"""UniPC, iPNDM, Heun and Euler ancestral against closed forms (iddpm.diffusion.unipc,
iddpm.diffusion.sigma_solvers).

Order of accuracy uses the exact probability-flow ODE on the Gaussian oracle, as
test_dpm_solver.py does (its module docstring has the closed form), with the worst relative
error over a family of data scales. The base process here is the cosine schedule with
T = 10,000 steps: with T = 1,000 every solver levels off near 3e-4 from ~80 steps, where the
base grid's own λ-steps next to the data (0.4 between steps 0 and 1) cannot be refined, and
the asymptotic order would only show in a window of two points.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch

from conftest import gaussian_oracle
from iddpm.diffusion import registry, schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, VarType
from iddpm.diffusion.respace import karras_steps, logsnr_steps, parse_steps, respace
from iddpm.diffusion.samplers import Denoiser, run_to_end
from iddpm.diffusion.sigma_solvers import _AB_WEIGHTS, heun_calls, variable_weights
from iddpm.diffusion.unipc import corrector, predictor

MU = 0.3
SCALES = (0.1, 0.3, 1.0)
Z = torch.linspace(-3, 3, 8, dtype=torch.float64).reshape(2, 1, 2, 2)
FINE = 10_000


@functools.cache
def base(T: int) -> GaussianDiffusion:
    return GaussianDiffusion(schedules.get("cosine", T), var_type=VarType.LEARNED_RANGE)


def process(spec: str, T: int = FINE) -> GaussianDiffusion:
    """The process of a step spec; "wide-logsnrK" and "wide-karrasK" are those spacings over
    the range the order tests need (log-SNR down to −9 from step 0, σ in [σ of step 0, 80])
    rather than the package's few-step defaults."""
    b = base(T)
    if spec.startswith("wide-"):
        kind, k = spec[5:11], int(spec[11:])
        steps = (
            logsnr_steps(k, b.alphas_cumprod, floor=-9.0, ceiling=math.inf)
            if kind == "logsnr"
            else karras_steps(k, b.alphas_cumprod, sigma_min=0.0, sigma_max=80.0)
        )
        return respace(b, steps)[0]
    return respace(b, parse_steps(spec, T, alphas_cumprod=b.alphas_cumprod))[0]


def exact_output(d: GaussianDiffusion, s: float) -> torch.Tensor:
    ab = d.alphas_cumprod
    var0, varT = float((1 - ab[0]) / ab[0]), float((1 - ab[-1]) / ab[-1])
    return MU + s**2 / math.sqrt((s**2 + var0) * (s**2 + varT)) * (Z / ab[-1].sqrt() - MU)


def worst_error(name: str, spec: str, T: int = FINE, **options) -> float:
    d = process(spec, T)
    opts = registry.make_options(name, options)
    errs = []
    for s in SCALES:
        x = registry.sample(
            name, gaussian_oracle(d, MU, s), d, options=opts, noise=Z, clip_denoised=False
        )
        ref = exact_output(d, s)
        errs.append(float((x - ref).abs().max() / (ref - MU).abs().max()))
    return max(errs)


def pairwise_orders(name: str, spacing: str, ks: tuple[int, ...], **options) -> list[float]:
    errs = [worst_error(name, f"{spacing}{k}", **options) for k in ks]
    return [math.log2(b / a) for a, b in itertools.pairwise(errs)]


# ---------------------------------------------------------------------- order of accuracy
@pytest.mark.parametrize(
    "order, low, high",
    # UniC-p raises UniP-p's order p by one. Measured pairwise log2 ratios at 20→40→80
    # log-SNR steps: order 1 −1.98, −2.01; order 2 −2.91, −3.02.
    [(1, -2.3, -1.7), (2, -3.4, -2.6)],
)
def test_unipc_converges_at_its_order_plus_one(order: int, low: float, high: float) -> None:
    slopes = pairwise_orders("unipc", "wide-logsnr", (20, 40, 80), order=order)
    assert all(low <= s <= high for s in slopes), slopes


def test_unipc_order_3_is_fourth_order_before_the_float_floor() -> None:
    # Measured 1.75e-3, 1.08e-4 at 20, 40 log-SNR steps (−4.02); from ~80 steps the error
    # sits at ~4e-5 (the base grid's steps next to the data, module docstring).
    (slope,) = pairwise_orders("unipc", "wide-logsnr", (20, 40), order=3)
    assert -4.6 <= slope <= -3.5, slope


def test_heun_is_second_order_per_step() -> None:
    # Measured −2.19, −2.09 (log-SNR) and −2.18, −2.09 (Karras) at 20→40→80 steps.
    for spacing in ("wide-logsnr", "wide-karras"):
        slopes = pairwise_orders("heun", spacing, (20, 40, 80))
        assert all(-2.4 <= s <= -1.8 for s in slopes), (spacing, slopes)


def test_ipndm_orders_fixed_and_variable_weights() -> None:
    # iPNDM's equal-step weights on a grid uneven in σ are second order (measured −2.18,
    # −2.10); the variable-step weights reach order 4 (measured −2.98, −3.47: still
    # approaching −4 at 80 steps).
    fixed = pairwise_orders("ipndm", "wide-logsnr", (20, 40, 80))
    assert all(-2.4 <= s <= -1.8 for s in fixed), fixed
    variable = pairwise_orders("ipndm", "wide-logsnr", (20, 40, 80), variable=True)
    assert variable[-1] <= -3.2 and variable[0] <= -2.7, variable


def test_at_five_steps_ipndm_beats_dpmpp2m_on_the_oracle() -> None:
    # The few-step regime iPNDM is for (T = 1000, as sampled): measured worst errors at 5
    # log-SNR steps 8.1e-2 (ipndm), 2.3e-1 (dpmpp2m), 3.7e-1 (unipc, whose corrector pays
    # from 10 steps: 4.9e-2 against dpmpp2m's 4.0e-2 there, 9.2e-3 against 1.4e-2 at 20).
    errs = {n: worst_error(n, "wide-logsnr5", T=1000) for n in ("dpmpp2m", "ipndm")}
    assert errs["ipndm"] < errs["dpmpp2m"] / 2, errs


# ---------------------------------------------------------------------- one step
def _abar(lam: float) -> float:
    return 1.0 / (1.0 + math.exp(-2.0 * lam))


def _exact_step(x, coeffs, lam_s, lam_t):
    """x_t = (σ_t/σ_s) x_s + σ_t ∫ e^λ p(λ) dλ for a polynomial x̂0 = p(λ) (degree ≤ 3)."""
    derivs = [list(coeffs)]
    for _ in range(3):
        derivs.append([k * c for k, c in enumerate(derivs[-1])][1:] or [0 * coeffs[0]])

    def poly(cs, lam):
        return sum(c * lam**k for k, c in enumerate(cs))

    def anti(lam):
        return math.exp(lam) * sum((-1) ** j * poly(d, lam) for j, d in enumerate(derivs))

    sig_s, sig_t = math.sqrt(1 - _abar(lam_s)), math.sqrt(1 - _abar(lam_t))
    return sig_t / sig_s * x + sig_t * (anti(lam_t) - anti(lam_s))


def _step_error(kind: str, p: int, degree: int, h: float) -> float:
    g = torch.Generator().manual_seed(degree)
    coeffs = [torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64) for _ in range(degree + 1)]
    x = torch.randn(2, 1, 2, 2, generator=g, dtype=torch.float64)

    def m(lam: float) -> torch.Tensor:
        return sum(c * lam**k for k, c in enumerate(coeffs))

    lam_s, lam_t = 0.3, 0.3 + h
    past = [lam_s, lam_s - 0.7 * h, lam_s - 2.0 * h][:p]
    preds = [m(lam) for lam in past]
    if kind == "predictor":
        got = predictor(x, preds, [*past, lam_t], _abar(lam_s), _abar(lam_t))
    else:
        got = corrector(x, None, [m(lam_t), *preds], [lam_t, *past], _abar(lam_s), _abar(lam_t))
    return float((got - _exact_step(x, coeffs, lam_s, lam_t)).abs().max())


@pytest.mark.parametrize(
    "kind, p, power",
    [
        ("predictor", 1, 2),
        ("predictor", 2, 3),
        ("predictor", 3, 4),
        ("corrector", 1, 3),
        ("corrector", 2, 4),
    ],
)
def test_unipc_local_error_has_the_order_of_the_method(kind: str, p: int, power: int) -> None:
    # Local error O(h^{order+1}): UniP-p has order p, UniC-p order p + 1. x̂0 is a cubic,
    # which no step here integrates exactly; halving h divides the error by 2^power.
    ratio = _step_error(kind, p, 3, 0.02) / _step_error(kind, p, 3, 0.01)
    assert 2**power * 0.85 < ratio < 2**power * 1.15, ratio


def test_unipc_steps_are_exact_for_x0_polynomials_they_interpolate() -> None:
    # UniP-3 interpolates a quadratic x̂0 through its three points; UniC-3 a cubic.
    assert _step_error("predictor", 3, 2, 0.5) < 1e-12
    assert _step_error("corrector", 3, 3, 0.5) < 1e-12


def test_ipndm_variable_weights_are_adams_bashforth() -> None:
    # Equal steps give the published iPNDM weights; any steps integrate polynomials exactly.
    for k, weights in _AB_WEIGHTS.items():
        nodes = [1.0 + 0.1 * j for j in range(k)]  # σ_t, σ_{t+1}, … (growing into the past)
        got = variable_weights(nodes, 1.0, 0.9)
        assert np.allclose(got, weights, rtol=0, atol=1e-12), (k, got)
    nodes = [1.0, 1.3, 2.2, 4.0]
    got = variable_weights(nodes, 1.0, 0.6)
    for degree in range(4):
        exact = (0.6 ** (degree + 1) - 1.0) / (degree + 1) / (0.6 - 1.0)
        assert abs(sum(w * n**degree for w, n in zip(got, nodes)) - exact) < 1e-12


# ---------------------------------------------------------------------- calls and identities
@pytest.mark.parametrize("name", ["heun", "unipc", "ipndm", "euler-ancestral"])
def test_network_calls_are_counted_honestly(name: str) -> None:
    # The registry's `calls` is what the loop spends; Heun takes a step that shrinks σ more
    # than 100-fold as an Euler step, one call fewer (sigma_solvers docstring): the first
    # step of a spacing from the cosine's top (σ = 2·10⁴), or a Karras step 80 → 0.006.
    for spec, fewer in (
        ("karras1", 0),
        ("karras2", 0),
        ("karras10", 0),
        ("5", 1),
        ("wide-karras2", 1),
    ):
        d = process(spec, T=1000)
        oracle = gaussian_oracle(d, MU, 0.2)
        seen: list[int] = []

        def model(x, t, oracle=oracle, seen=seen):
            seen.append(int(t[0]))
            return oracle(x, t)

        registry.sample(name, model, d, shape=(2, 1, 2, 2), generator=torch.Generator())
        k = d.num_timesteps
        expected = registry.get(name).calls(k) - (fewer if name == "heun" else 0)
        assert len(seen) == expected, (name, spec, seen)
    assert heun_calls(5) == 9


def test_euler_ancestral_without_noise_is_ddim() -> None:
    # The Euler step in σ is DDIM(η = 0) (Karras et al., §3), clipped x̂0 and all.
    d = process("at:0,3,50,400,999", T=1000)
    model = gaussian_oracle(d, MU, 0.5)
    a = registry.sample("euler-ancestral", model, d, noise=Z, options=registry.make_options(
        "euler-ancestral", {"eta": 0.0}))  # fmt: skip
    b = registry.sample("ddim", model, d, noise=Z)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_unipc_order_1_without_corrector_is_ddim() -> None:
    # UniP-1 is DPM-Solver++(1) = DDIM; the corrector is what makes unipc differ.
    d = process("logsnr7", T=1000)
    denoise = Denoiser(gaussian_oracle(d, MU, 0.5), d, clip_denoised=False)
    from iddpm.diffusion.dpm_solver import _multistep

    a = run_to_end(_multistep(denoise, Z, predictor, 1, math.inf))
    b = registry.sample("ddim", gaussian_oracle(d, MU, 0.5), d, noise=Z, clip_denoised=False)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    c = registry.sample("unipc", gaussian_oracle(d, MU, 0.5), d, noise=Z, clip_denoised=False,
                        options=registry.make_options("unipc", {"order": 1}))  # fmt: skip
    assert not torch.allclose(a, c)


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("unipc", {"order": 4}, "--order 4 is not supported by unipc"),
        ("unipc", {"variant": "bh3"}, "not a UniPC variant"),
        ("ipndm", {"order": 0}, "--order 0 is not supported by ipndm"),
        ("euler-ancestral", {"eta": 2}, "outside"),
        ("dpmpp2m", {"max_step_ratio": 0}, "must be > 0"),
    ],
)
def test_bad_options_are_one_line_errors(name: str, options: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        registry.make_options(name, options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, draws",
    [
        ("euler-ancestral", 5),
        ("ancestral", 5),
        ("unipc", 0),
        ("ipndm", 0),
        ("heun", 0),
    ],
)
def test_the_loops_draw_step_noise_only_from_their_source(name: str, draws: int) -> None:
    # The contract: a loop gets its step noise from the source it is given, one draw per
    # noisy step (none at the last), and the ODE solvers draw none.
    d = process("6", T=1000)
    denoise = Denoiser(gaussian_oracle(d, MU, 0.5), d)
    seen: list[tuple[int, ...]] = []

    def source(like: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(like.shape))
        return torch.zeros_like(like)

    entry = registry.get(name)
    run_to_end(entry.steps(denoise, Z, source))
    assert seen == [tuple(Z.shape)] * draws


@pytest.mark.parametrize("order, nfe", [(2, 10), (3, 5)])
def test_unipc_equals_diffusers_unipc(order: int, nfe: int) -> None:
    # The same solver as diffusers' UniPCMultistepScheduler (bh2, trailing, lower order at
    # the end) on the same β, x_T and ε-model: equal up to float32 rounding, which x̂0 =
    # (x − σε̂)/α amplifies at the top (α = 5e-5): measured 2e-4 / 4e-4 here, 6e-5 / 3e-4 on
    # the digits model. (Order 1 instead differs by 7e-2, order 3 by 2e-3.)
    diffusers = pytest.importorskip("diffusers")
    d0 = GaussianDiffusion(schedules.get("cosine", 1000))
    sched = diffusers.UniPCMultistepScheduler(
        num_train_timesteps=1000, trained_betas=d0.betas.tolist(), prediction_type="epsilon",
        solver_order=order, timestep_spacing="trailing",
    )  # fmt: skip
    sched.set_timesteps(nfe)
    oracle = gaussian_oracle(d0, MU, 0.5)
    x_T = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    x = x_T.clone()
    for t in sched.timesteps:
        eps = oracle(x, torch.full((4,), int(t)))[:, :1].float()
        x = sched.step(eps, t, x).prev_sample
    d = respace(d0, parse_steps(f"trailing{nfe}", 1000))[0]
    ours = registry.sample("unipc", gaussian_oracle(d, MU, 0.5), d, noise=x_T,
                           clip_denoised=False, options=registry.make_options(
                               "unipc", {"order": order}))  # fmt: skip
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-3)
