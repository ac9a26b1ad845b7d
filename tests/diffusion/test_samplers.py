"""Samplers against closed forms on Gaussian data (docs/paper.md P6–P8, P14, P15).

For x0 ~ N(mu, s² I) the oracle denoiser is exact, so:
- ancestral sampling with the oracle's learned Σ runs the exact reverse chain: its samples
  have known moments for any (strided) process;
- η = 0 DDIM is explicit Euler on the probability-flow ODE in σ = √((1 − ᾱ)/ᾱ) and
  x̄ = x/√ᾱ, where ε̂ = σ/(s² + σ²)·(x̄ − mu): every step multiplies x̄ − mu by a number
  computable from the tables alone, which gives its output in closed form.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import gaussian_oracle
from iddpm.diffusion import schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.respace import parse_steps, respace, spaced_model
from iddpm.diffusion.samplers import (
    SamplerStep,
    ancestral,
    ancestral_steps,
    ddim,
    ddim_reverse,
    ddim_reverse_steps,
    ddim_steps,
    per_sample_generators,
)

MU, S = 0.3, 0.2


def make(schedule: str = "cosine", T: int = 1000, **kw) -> GaussianDiffusion:
    return GaussianDiffusion(schedules.get(schedule, T), **kw)


def strided(spec: str, schedule: str = "cosine", **kw) -> GaussianDiffusion:
    base = make(schedule, 1000, **kw)
    return respace(base, parse_steps(spec, 1000))[0]


def sigmas(d: GaussianDiffusion) -> tuple[torch.Tensor, torch.Tensor]:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t) and σ_{t−1} (σ_{−1} = 0), [T] float64."""
    ab = d.alphas_cumprod
    sig = ((1 - ab) / ab).sqrt()
    return sig, torch.cat([torch.zeros(1, dtype=torch.float64), sig[:-1]])


def slope(sig: torch.Tensor, s: float = S) -> torch.Tensor:
    """dε̂/dx̄ for Gaussian data: ε̂ = slope(σ)·(x̄ − mu)."""
    return sig / (s**2 + sig**2)


def ddim_factor(d: GaussianDiffusion) -> float:
    """η = 0 DDIM maps x̄_T − mu to P·(x̄_T − mu), P = ∏_t (1 − (σ_t − σ_{t−1})·slope(σ_t))."""
    sig, prev = sigmas(d)
    return float(torch.prod(1 - (sig - prev) * slope(sig)))


def mc_tol_mean(var: float, n: int) -> float:
    return 5 * math.sqrt(var / n)


def mc_tol_var(var: float, n: int) -> float:
    # Var of the sample variance of n Gaussians is 2σ⁴/(n − 1).
    return 5 * var * math.sqrt(2 / (n - 1))


# ---------------------------------------------------------------------- ancestral
def exact_chain_moments(d: GaussianDiffusion) -> tuple[float, float]:
    """Moments of the exact reverse chain started from N(0, I) instead of q(x_T):
    the last step returns E[x0 | x at index 0], and x_T enters through E[x0 | x_T]."""
    ab0, abT = float(d.alphas_cumprod[0]), float(d.alphas_cumprod[-1])
    var0 = S**2 * (1 - ab0) / (ab0 * S**2 + 1 - ab0)  # Var[x0 | x at index 0]
    c = math.sqrt(abT) * S**2 / (abT * S**2 + 1 - abT)  # dE[x0 | x_T]/dx_T
    mean = MU - c * math.sqrt(abT) * MU
    var = S**2 - var0 + c**2 * (1 - (abT * S**2 + 1 - abT))
    return mean, var


@pytest.mark.parametrize("spec", ["", "50"])
def test_ancestral_with_learned_sigma_reproduces_gaussian_data(spec: str) -> None:
    d = strided(spec, var_type=VarType.LEARNED_RANGE)
    n = 4096 * 4
    gen = torch.Generator().manual_seed(0)
    x = ancestral(
        gaussian_oracle(d, MU, S), d, shape=(4096, 1, 2, 2), generator=gen, clip_denoised=False
    ).flatten()
    mean, var = exact_chain_moments(d)
    assert abs(var - S**2) < 0.01 * S**2  # the exact chain only loses Var[x0 | x at index 0]
    assert abs(float(x.mean()) - mean) < mc_tol_mean(var, n)
    assert abs(float(x.var()) - var) < mc_tol_var(var, n)


def test_ancestral_last_step_is_the_mean_without_noise() -> None:
    d = make("linear", 30, var_type=VarType.FIXED_LARGE)
    model = gaussian_oracle(d, MU, S)
    gen = torch.Generator().manual_seed(1)
    steps = list(ancestral_steps(model, d, shape=(3, 1, 2, 2), generator=gen))
    assert [s.t for s in steps] == list(range(29, -1, -1))
    x1 = steps[-2].x
    t0 = torch.zeros(3, dtype=torch.int64)
    expected = d.p_mean_variance(model(x1, t0), x1, t0).mean
    torch.testing.assert_close(steps[-1].x, expected, rtol=0, atol=0)


# ---------------------------------------------------------------------- DDIM
@pytest.mark.parametrize("spec", ["", "50", "ddim50"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_eta0_is_euler_on_the_probability_flow_ode(spec: str, schedule: str) -> None:
    d = strided(spec, schedule)
    z = torch.linspace(-3, 3, 8, dtype=torch.float64).reshape(2, 1, 2, 2)
    x = ddim(gaussian_oracle(d, MU, S), d, noise=z, clip_denoised=False)
    abT = d.alphas_cumprod[-1]
    expected = MU + ddim_factor(d) * (z / abT.sqrt() - MU)
    torch.testing.assert_close(x, expected, rtol=1e-10, atol=1e-10)


def test_ddim_samples_match_the_closed_form_and_converge_to_the_data() -> None:
    d = strided("50")
    n = 4096 * 4
    x = ddim(
        gaussian_oracle(d, MU, S),
        d,
        shape=(4096, 1, 2, 2),
        clip_denoised=False,
        generator=torch.Generator().manual_seed(2),
    ).flatten()
    P, abT = ddim_factor(d), float(d.alphas_cumprod[-1])
    mean, var = MU - P * MU, P**2 / abT
    assert abs(float(x.mean()) - mean) < mc_tol_mean(var, n)
    assert abs(float(x.var()) - var) < mc_tol_var(var, n)
    # Euler is first order: the standard deviation's error shrinks as steps are added,
    # and with every step kept it is within 1% of the data's (the ODE preserves it).
    errors = []
    for spec in ("10", "50", "250", ""):
        dk = strided(spec)
        errors.append(abs(ddim_factor(dk) / math.sqrt(float(dk.alphas_cumprod[-1])) - S))
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.01 * S


def test_ddim_eta1_is_ancestral_sampling_with_posterior_variance() -> None:
    # σ_t(η=1)² = β̃_t and √(1 − ᾱ_{t−1} − β̃_t)·ε̂ + √ᾱ_{t−1}·x̂0 is the posterior mean (P3).
    d = strided("ddim50", var_type=VarType.FIXED_SMALL)
    model = gaussian_oracle(d, MU, S)
    shape = (4, 1, 3, 3)
    a = ancestral(
        model, d, shape=shape, generator=per_sample_generators(5, range(4)), dtype=torch.float64
    )
    b = ddim(
        model,
        d,
        shape=shape,
        generator=per_sample_generators(5, range(4)),
        eta=1.0,
        dtype=torch.float64,
    )
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_ddim_eta0_is_deterministic_and_draws_no_noise() -> None:
    d = strided("20")
    model = gaussian_oracle(d, MU, S)
    z = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    before = gen.get_state()
    a = ddim(model, d, noise=z, generator=gen)
    assert torch.equal(gen.get_state(), before)
    assert torch.equal(a, ddim(model, d, noise=z.clone()))


def test_strided_sampling_sees_original_steps_through_the_adapter() -> None:
    # An oracle of the *base* process, called with base steps, gives the same ε̂ as the
    # strided process's own oracle: the adapter must pass the original indices.
    base = make("linear", 1000, var_type=VarType.FIXED_SMALL)
    d, adapted = spaced_model(gaussian_oracle(base, MU, S), base, "25", rescale_timesteps=False)
    z = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    via_adapter = ddim(adapted, d, noise=z, clip_denoised=False)
    direct = ddim(gaussian_oracle(d, MU, S), d, noise=z, clip_denoised=False)
    torch.testing.assert_close(via_adapter, direct, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------- reverse DDIM
def round_trip(d: GaussianDiffusion, x0: torch.Tensor) -> torch.Tensor:
    """Closed form of reverse-then-forward η = 0 DDIM on Gaussian data.

    Reverse step t (t ≥ 1) reads ε̂ at its input's level σ_{t−1}, so it multiplies x̄ − mu by
    1 + h_t·slope(σ_{t−1}), h_t = σ_t − σ_{t−1}; the forward step multiplies it back by
    1 − h_t·slope(σ_t). The first reverse step starts from the data x0 but reads ε̂ at index 0,
    where the model takes x0 as a sample of level ᾱ_0: x̄_0 = x0 + σ_0·slope(σ_0)·(x0/√ᾱ_0 − mu).
    """
    sig, prev = sigmas(d)
    h = sig - prev
    k0, ab0 = float(slope(sig[:1])[0]), float(d.alphas_cumprod[0])
    xbar0 = x0 + float(sig[0]) * k0 * (x0 / math.sqrt(ab0) - MU)
    factor = torch.prod((1 + h[1:] * slope(prev[1:])) * (1 - h[1:] * slope(sig[1:])))
    xbar_back0 = MU + float(factor) * (xbar0 - MU)  # back at level ᾱ_0
    return MU + (1 - float(sig[0]) * k0) * (xbar_back0 - MU)  # last forward step, to level 1


@pytest.mark.parametrize("spec", ["50", "ddim250"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_reverse_ddim_inverts_ddim_to_its_discretisation_error(spec: str, schedule: str) -> None:
    d = strided(spec, schedule)
    model = gaussian_oracle(d, MU, S)
    x0 = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(3, 1, 2, 2)
    latent = ddim_reverse(model, d, x0)
    back = ddim(model, d, noise=latent, clip_denoised=False)
    # Exact: the round trip is the closed-form product of the two Euler schemes.
    torch.testing.assert_close(back, round_trip(d, x0), rtol=1e-9, atol=1e-9)
    # Derived bound: each step pair errs by h²·(slope' + slope²) = h²·s²/(s² + σ²)² to
    # leading order, largest at the lower end of the step, so the relative error of
    # x0 − mu is at most Σ h²·s²/(s² + σ_{t−1}²)².
    sig, prev = sigmas(d)
    bound = float(((sig - prev) ** 2 * S**2 / (S**2 + prev**2) ** 2).sum())
    assert float((back - x0).abs().max()) <= bound * float((x0 - MU).abs().max())


def test_reverse_ddim_error_vanishes_as_steps_are_added() -> None:
    x0 = torch.tensor([-1.0, 1.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    errs = []
    for spec in ("50", "250", ""):
        d = strided(spec, "linear")
        model = gaussian_oracle(d, MU, S)
        back = ddim(model, d, noise=ddim_reverse(model, d, x0), clip_denoised=False)
        errs.append(float((back - x0).abs().max()))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 0.02


def test_reverse_steps_climb_from_index_0_to_T_minus_1() -> None:
    d = strided("10")
    x0 = torch.zeros(2, 1, 2, 2)
    steps = list(ddim_reverse_steps(gaussian_oracle(d, MU, S), d, x0))
    assert [s.t for s in steps] == list(range(10))
    # The first step's x̂0 is the data itself.
    assert torch.equal(steps[0].pred_x0, x0)


# ---------------------------------------------------------------------- randomness
@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_sample_depends_only_on_its_seed_and_index(sampler: str) -> None:
    d = strided("10", var_type=VarType.LEARNED_RANGE)
    model = gaussian_oracle(d, MU, S)
    run = ancestral if sampler == "ancestral" else ddim
    extra = {} if sampler == "ancestral" else {"eta": 0.5}

    def draw(indices: list[int]) -> torch.Tensor:
        gens = per_sample_generators(11, indices)
        return run(model, d, shape=(len(indices), 1, 3, 3), generator=gens, **extra)

    ref = draw(list(range(16)))
    for bs in (1, 4):
        chunks = [draw(list(range(i, i + bs))) for i in range(0, 16, bs)]
        assert torch.equal(torch.cat(chunks), ref)
    # Index k drawn alone equals index k of the big batch; other seeds differ.
    assert torch.equal(draw([7])[0], ref[7])
    other = run(model, d, shape=(1, 1, 3, 3), generator=per_sample_generators(12, [7]), **extra)
    assert not torch.equal(other[0], ref[7])
    assert len({tuple(r.flatten().tolist()) for r in ref}) == 16


def test_per_sample_generators_give_distinct_reproducible_streams() -> None:
    a = [torch.randn(4, generator=g) for g in per_sample_generators(0, [0, 1, 2])]
    b = [torch.randn(4, generator=g) for g in per_sample_generators(0, [0, 1, 2])]
    c = [torch.randn(4, generator=g) for g in per_sample_generators(1, [0, 1, 2])]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not any(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[0], a[1])


def test_single_generator_reproduces_a_batch() -> None:
    d = strided("10", var_type=VarType.FIXED_LARGE)
    model = gaussian_oracle(d, MU, S)
    a = ancestral(model, d, shape=(2, 1, 2, 2), generator=torch.Generator().manual_seed(9))
    b = ancestral(model, d, shape=(2, 1, 2, 2), generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


# ---------------------------------------------------------------------- loops, callbacks
def test_callback_sees_every_step_and_wrapper_returns_the_last() -> None:
    d = strided("7", var_type=VarType.FIXED_SMALL)
    model = gaussian_oracle(d, MU, S)
    seen: list[SamplerStep] = []
    z = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(8))
    out = ddim(model, d, noise=z, callback=seen.append)
    assert [s.t for s in seen] == list(range(6, -1, -1))
    assert out is seen[-1].x
    assert torch.equal(out, list(ddim_steps(model, d, noise=z))[-1].x)


SWEEP = [(sched, mt, vt) for sched in ("linear", "cosine") for mt in MeanType for vt in VarType]


@pytest.mark.parametrize("schedule, mean_type, var_type", SWEEP)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_configuration_yields_finite_steps_of_the_sample_dtype(
    schedule: str, mean_type: MeanType, var_type: VarType, dtype: torch.dtype
) -> None:
    d = make(schedule, 30, mean_type=mean_type, var_type=var_type)
    model = gaussian_oracle(d, MU, S)
    shape = (2, 3, 4, 4)
    gen = torch.Generator().manual_seed(10)
    for steps in (
        ancestral_steps(model, d, shape=shape, generator=gen, dtype=dtype),
        ddim_steps(model, d, shape=shape, generator=gen, dtype=dtype, eta=0.5),
    ):
        out = list(steps)
        assert [s.t for s in out] == list(range(29, -1, -1))
        for s in (out[0], out[-1]):  # t = T − 1 and t = 0
            for v in (s.x, s.pred_x0):
                assert v.shape == shape and v.dtype == dtype
                assert bool(torch.isfinite(v).all())
    latent = ddim_reverse(model, d, torch.zeros(shape, dtype=dtype))
    assert latent.shape == shape and latent.dtype == dtype and bool(torch.isfinite(latent).all())


# ---------------------------------------------------------------------- errors
def _zero_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(x)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "pass either noise= (the starting x_T) or shape="),
        ({"shape": (2, 1, 2, 2), "noise": torch.zeros(3, 1, 2, 2)}, "does not match noise"),
        (
            {"shape": (2, 1, 2, 2), "generator": per_sample_generators(0, [0, 1, 2])},
            "got 3 generators for a batch of 2",
        ),
    ],
)
def test_bad_sampler_arguments_raise_one_line_errors(kwargs: dict, message: str) -> None:
    d = make("cosine", 5, var_type=VarType.FIXED_SMALL)
    with pytest.raises(ValueError) as err:
        ancestral(_zero_model, d, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("eta", [-0.1, 1.5])
def test_ddim_rejects_eta_outside_0_1(eta: float) -> None:
    d = make("cosine", 5, var_type=VarType.FIXED_SMALL)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        ddim(_zero_model, d, shape=(1, 1, 2, 2), eta=eta)


def test_per_sample_generators_reject_negative_seeds_and_indices() -> None:
    with pytest.raises(ValueError, match="seed must be >= 0"):
        per_sample_generators(-1, [0])
    with pytest.raises(ValueError, match="sample indices must be >= 0"):
        per_sample_generators(0, [1, -2])
