"""Analytic-DPM (diffusion/analytic.py) against closed forms.

Gaussian data x0 ~ N(mu, s²I) with the exact ε (conftest's oracle): ε̂ = E[ε | x_n] =
√β̄_n (x_n − √ᾱ_n mu)/v_n with v_n = ᾱ_n s² + β̄_n, so ε̂² = Γ_n z² (z standard normal) and

    Γ_n = β̄_n / (ᾱ_n s² + β̄_n),   Var ε̂² = 2Γ_n²,

independent of mu; the optimal reverse variance is the true one, β̃_n + coef1_n² Var[x0 | x_n]
with Var[x0 | x_n] = s² β̄_n / v_n. Monte-Carlo tolerances: 5 standard errors of a mean of
M·d independent ε̂² values, 5Γ_n √(2/(M·d)), propagated to σ_n² by its slope
coef1_n² β̄_n/ᾱ_n. The bound comparison uses data uniform on four uint8 levels (the
discrete oracle), on which the discretised decoder is meaningful.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import discrete_oracle, gaussian_oracle
from iddpm.diffusion import registry, schedules
from iddpm.diffusion.analytic import (
    AnalyticOptions,
    analytic_variance,
    clip_for_sampling,
    estimate_eps_moments,
    x0_variance_bounds,
)
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.likelihood import bits_per_dim
from iddpm.diffusion.respace import parse_steps, respace
from iddpm.diffusion.samplers import ancestral, per_sample_generators

MU, S = 0.3, 0.2
Z = 5.0  # tolerance in standard errors


def process(
    steps: str,
    var_type: VarType = VarType.FIXED_SMALL,
    mean_type: MeanType = MeanType.EPSILON,
    schedule: str = "cosine",
) -> GaussianDiffusion:
    base = GaussianDiffusion(schedules.get(schedule, 1000), mean_type, var_type)
    return respace(base, parse_steps(steps, 1000))[0]


def gamma_closed_form(d: GaussianDiffusion, s: float) -> torch.Tensor:
    abar = d.alphas_cumprod
    return (1 - abar) / (abar * s**2 + 1 - abar)


def optimal_variance_closed_form(d: GaussianDiffusion, s: float) -> torch.Tensor:
    abar = d.alphas_cumprod
    var_x0 = s**2 * (1 - abar) / (abar * s**2 + 1 - abar)
    return d.posterior_variance + d.posterior_mean_coef1**2 * var_x0


def gaussian_x0(m: int, seed: int) -> torch.Tensor:
    return MU + S * torch.randn(m, 1, 2, 2, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- the formula
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("steps", ["5", "25", ""])
def test_theorem_with_the_exact_gamma_is_the_true_reverse_variance(schedule, steps) -> None:
    d = process(steps, schedule=schedule)
    sigma2 = analytic_variance(d, gamma_closed_form(d, S))
    assert sigma2.dtype == torch.float64 and sigma2.shape == (d.num_timesteps,)
    # 1 − Γ_n cancels where ᾱ_n → 0: allow float64 rounding of Γ times the slope
    abar = d.alphas_cumprod
    slope = d.posterior_mean_coef1**2 * (1 - abar) / abar
    want = optimal_variance_closed_form(d, S)
    assert ((sigma2 - want).abs() <= 1e-10 * want + 1e-15 * slope)[1:].all()
    # the decoder keeps the fixed small variance (β̃ of the next kept step's jump)
    assert sigma2[0] == torch.exp(d.posterior_log_variance_clipped[0])


def test_variance_is_clipped_to_the_bounds_of_theorem_2() -> None:
    d = process("10")
    coef2 = d.posterior_mean_coef1**2
    # Γ > 1 would make E Var[x0 | x_n] negative: the lower bound β̃_n
    low = analytic_variance(d, torch.full((10,), 2.0))
    torch.testing.assert_close(low[1:], d.posterior_variance[1:], rtol=0, atol=0)
    # Γ = 0: E Var[x0 | x_n] = β̄_n/ᾱ_n, capped by ((b − a)/2)² = 1 on [−1, 1]
    high = analytic_variance(d, torch.zeros(10))
    cap = torch.clamp((1 - d.alphas_cumprod) / d.alphas_cumprod, max=1.0)
    torch.testing.assert_close(high[1:], (d.posterior_variance + coef2 * cap)[1:])
    assert (cap < 1).any() and (cap == 1).any(), "both upper bounds must bite somewhere"
    # data on [0, 0.5]: the range bound is 0.25² instead
    narrow = analytic_variance(d, torch.zeros(10), x0_range=(0.0, 0.5))
    torch.testing.assert_close(x0_variance_bounds(d, (0.0, 0.5)), cap.clamp(max=0.0625))
    torch.testing.assert_close(
        narrow[1:], (d.posterior_variance + coef2 * cap.clamp(max=0.0625))[1:]
    )


def test_sampling_clip_caps_the_mean_absolute_noise_of_the_step_before_the_decoder() -> None:
    d = process("10")
    table = analytic_variance(d, gamma_closed_form(d, S))
    for pixels in (1.0, 2.0):
        clipped = clip_for_sampling(table, pixels)
        # E|σ z| = σ √(2/π) is `pixels` uint8 levels of 2/255
        assert float(clipped[1].sqrt()) * math.sqrt(2 / math.pi) == pytest.approx(pixels * 2 / 255)
        assert table[1] > clipped[1]
        assert torch.equal(clipped[[0, *range(2, 10)]], table[[0, *range(2, 10)]])
    assert torch.equal(clip_for_sampling(table, math.inf), table)


# ---------------------------------------------------------------------- estimating Γ
@pytest.mark.parametrize("mean_type", list(MeanType))
@pytest.mark.parametrize("var_type", [VarType.FIXED_SMALL, VarType.LEARNED_RANGE])
def test_estimated_gamma_and_variance_match_the_closed_form(mean_type, var_type) -> None:
    d = process("10", var_type, mean_type)
    m, dims = 2000, 4
    gamma = estimate_eps_moments(gaussian_oracle(d, MU, S), d, gaussian_x0(m, 1), seed=2)
    want = gamma_closed_form(d, S)
    tol = Z * want * math.sqrt(2 / (m * dims))
    assert ((gamma - want).abs() <= tol).all(), (gamma - want) / tol
    sigma2 = analytic_variance(d, gamma)
    abar = d.alphas_cumprod
    slope = d.posterior_mean_coef1**2 * (1 - abar) / abar
    err = (sigma2 - optimal_variance_closed_form(d, S))[1:].abs()
    assert (err <= (slope * tol)[1:] + 1e-15).all()


def test_estimate_does_not_depend_on_batching_and_is_seeded() -> None:
    d = process("12")
    model = gaussian_oracle(d, MU, S)
    x0 = gaussian_x0(50, 3)
    whole = estimate_eps_moments(model, d, x0, seed=4, batch_size=50, timestep_batch=12)
    for kwargs in ({"batch_size": 7, "timestep_batch": 5}, {"batch_size": 1, "timestep_batch": 1}):
        torch.testing.assert_close(
            estimate_eps_moments(model, d, x0, seed=4, **kwargs), whole, rtol=0, atol=0
        )
    batches = [x0[:20], x0[20:23], x0[23:]]
    torch.testing.assert_close(
        estimate_eps_moments(model, d, batches, seed=4), whole, rtol=0, atol=0
    )
    assert not torch.equal(estimate_eps_moments(model, d, x0, seed=5), whole)


# ---------------------------------------------------------------------- using the table
def test_a_reverse_variance_table_replaces_the_learned_variance_and_keeps_the_mean() -> None:
    d = process("10", VarType.LEARNED_RANGE)
    table = torch.linspace(0.01, 0.1, 10, dtype=torch.float64)  # any positive table
    da = d.with_reverse_variance(table)
    assert da.var_type is VarType.LEARNED_RANGE  # still 2C output channels
    x_t = gaussian_x0(6, 4)
    t = torch.arange(6)
    out = gaussian_oracle(d, MU, S)(x_t, t)
    plain, with_table = d.p_mean_variance(out, x_t, t), da.p_mean_variance(out, x_t, t)
    torch.testing.assert_close(with_table.mean, plain.mean, rtol=0, atol=0)
    want = table[t].reshape(6, 1, 1, 1).expand_as(x_t).to(x_t.dtype)
    torch.testing.assert_close(with_table.variance, want)
    torch.testing.assert_close(with_table.log_variance, with_table.variance.log())
    assert not torch.allclose(plain.variance, with_table.variance)
    with pytest.raises(ValueError, match="needs 2 channels"):
        da.p_mean_variance(out[:, :1], x_t, t)


def _sample_without_gamma(d: GaussianDiffusion) -> None:
    registry.sample("analytic", gaussian_oracle(d, MU, S), d, shape=(1, 1, 2, 2))


@pytest.mark.parametrize(
    "call,match",
    [
        (
            lambda d: analytic_variance(d, torch.ones(9)),
            "has 9 entries but the process has 10 steps; re-estimate for this step spacing",
        ),
        (lambda d: analytic_variance(d, ()), "estimate it with analytic.estimate_eps_moments"),
        (lambda d: analytic_variance(d, -torch.ones(10)), "must be finite and >= 0"),
        (lambda d: d.with_reverse_variance(torch.ones(12)), "re-estimate it for this step spacing"),
        (lambda d: d.with_reverse_variance(torch.zeros(10)), "finite and > 0"),
        (lambda d: AnalyticOptions(clip_pixel=0.0), r"--clip-pixel 0\.0 must be > 0"),
        (lambda d: AnalyticOptions(eps_moments=(1.0, float("nan"))), "must be finite"),
        (_sample_without_gamma, "estimate it with"),
    ],
)
def test_bad_tables_and_options_are_one_line_errors(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call(process("10"))


def test_registry_options_are_typed() -> None:
    opts = registry.make_options("analytic", {"clip_pixel": "inf", "eps_moments": [0.5, 0.25]})
    assert opts.clip_pixel == math.inf and opts.eps_moments == (0.5, 0.25)
    assert "clip_pixel" in registry.cli_options() and "eps_moments" not in registry.cli_options()


def test_sampling_with_the_exact_gamma_reproduces_gaussian_data_at_10_steps() -> None:
    # With the exact mean and variance every strided jump is the true reverse conditional
    # of Gaussian data, so 10 steps give the data's law, up to the last step returning the
    # mean (it loses Var[x0 | x at index 0]) and the start N(0, I) instead of q(x_T)
    # (ᾱ_T < 1e-8 here). Fixed-small ancestral sampling at 10 steps misses by far.
    d = process("10")
    model = gaussian_oracle(d, MU, S)
    n = 4096
    opts = AnalyticOptions(eps_moments=tuple(gamma_closed_form(d, S).tolist()), clip_pixel=math.inf)
    common = {"shape": (n, 1, 2, 2), "clip_denoised": False, "dtype": torch.float64}
    x = registry.sample(
        "analytic", model, d, options=opts, generator=torch.Generator().manual_seed(0), **common
    ).flatten()
    ab0 = float(d.alphas_cumprod[0])
    var_want = S**2 - S**2 * (1 - ab0) / (ab0 * S**2 + 1 - ab0)
    values = x.numel()
    tol_var = Z * S**2 * math.sqrt(2 / (values - 1))
    assert abs(float(x.mean()) - MU) < Z * S / math.sqrt(values)
    assert abs(float(x.var()) - var_want) < tol_var
    small = ancestral(model, d, generator=torch.Generator().manual_seed(0), **common).flatten()
    assert abs(float(small.var()) - var_want) > 3 * tol_var


# ---------------------------------------------------------------------- the bound
FOUR_LEVELS = torch.tensor([0, 85, 170, 255], dtype=torch.float64) / 127.5 - 1.0


@pytest.mark.parametrize("k", [5, 10, 25])
def test_analytic_bound_is_at_most_both_fixed_variance_bounds(k: int) -> None:
    # K-step bounds of a T = 1000 cosine process on data uniform on four uint8 levels with
    # the exact ε; Γ from 500 training images, the bound on 200 test images, each variance
    # type with the same per-image noise (a paired comparison).
    g = torch.Generator().manual_seed(6)
    train = FOUR_LEVELS[torch.randint(0, 4, (500, 1, 2, 2), generator=g)]
    test = FOUR_LEVELS[torch.randint(0, 4, (200, 1, 2, 2), generator=g)]
    gens = lambda: per_sample_generators(7, range(len(test)))  # noqa: E731
    bounds = {}
    for var_type in (VarType.FIXED_SMALL, VarType.FIXED_LARGE):
        d = process(str(k), var_type)
        bounds[var_type] = bits_per_dim(
            discrete_oracle(d, FOUR_LEVELS), d, test, generator=gens(), timestep_batch=k
        ).total_bpd
    d = process(str(k))
    model = discrete_oracle(d, FOUR_LEVELS)
    table = analytic_variance(d, estimate_eps_moments(model, d, train, seed=8))
    analytic = bits_per_dim(
        model, d.with_reverse_variance(table), test, generator=gens(), timestep_batch=k
    ).total_bpd
    for fixed in bounds.values():
        diff = analytic - fixed
        se = float(diff.std()) / math.sqrt(len(diff))
        assert float(diff.mean()) <= Z * se
