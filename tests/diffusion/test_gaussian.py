"""GaussianDiffusion: forward process, posterior, conversions, p_mean_variance (P1–P8)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from iddpm.diffusion import schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType


def make(schedule: str = "cosine", T: int = 100, **kw) -> GaussianDiffusion:
    return GaussianDiffusion(schedules.get(schedule, T), **kw)


def test_tables_are_float64_and_consistent() -> None:
    d = make(T=50)
    for name in (
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    ):
        tab = getattr(d, name)
        assert tab.dtype == torch.float64 and tab.shape == (50,), name
    assert d.alphas_cumprod_prev[0].item() == 1.0
    torch.testing.assert_close(d.alphas_cumprod_prev[1:], d.alphas_cumprod[:-1])
    # β̃ is 0 at the first step; its log is borrowed from the second step (docs/paper.md P3).
    assert d.posterior_variance[0].item() == 0.0
    assert d.posterior_log_variance_clipped[0].item() == math.log(d.posterior_variance[1].item())
    torch.testing.assert_close(d.posterior_log_variance_clipped[1:], d.posterior_variance[1:].log())


def test_q_sample_moments_match_p2(generator: torch.Generator) -> None:
    d = make(T=100)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7, dtype=torch.float64)
    for step in (0, 37, 99):
        t = torch.full((n,), step, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        xt = d.q_sample(x0, t, noise).flatten()
        abar = d.alphas_cumprod[step].item()
        mean, var = math.sqrt(abar) * 0.7, 1 - abar
        # 5σ tolerances from the sample size: sd(mean) = √(var/n), sd(var) ≈ var·√(2/n).
        assert abs(xt.mean().item() - mean) < 5 * math.sqrt(var / n)
        assert abs(xt.var().item() - var) < 5 * var * math.sqrt(2 / n)


def test_q_mean_variance_matches_q_sample_noise_scale() -> None:
    d = make(T=20)
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 5, 19])
    mean, var, log_var = d.q_mean_variance(x0, t)
    torch.testing.assert_close(mean, d.q_sample(x0, t, torch.zeros_like(x0)))
    torch.testing.assert_close(log_var, var.log())


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_matches_bayes_rule(schedule: str) -> None:
    d = make(schedule, T=60)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(60, 2, 3, 3, generator=g, dtype=torch.float64).clamp(-1, 1)
    xt = torch.randn(60, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.arange(60)
    mean, var, log_var = d.q_posterior(x0, xt, t)
    # Independently: q(x_{t-1}|x0) = N(√ᾱ_{t-1} x0, 1-ᾱ_{t-1}) and
    # q(x_t|x_{t-1}) = N(√α_t x_{t-1}, β_t);
    # the product of the two Gaussians in x_{t-1} has precision 1/(1-ᾱ_{t-1}) + α_t/β_t.
    betas = schedules.get(schedule, 60)
    abar = torch.cumprod(1 - betas, 0)
    for i in range(1, 60):
        prec = 1 / (1 - abar[i - 1]) + (1 - betas[i]) / betas[i]
        want_var = 1 / prec
        want_mean = want_var * (
            abar[i - 1].sqrt() * x0[i] / (1 - abar[i - 1])
            + (1 - betas[i]).sqrt() * xt[i] / betas[i]
        )
        torch.testing.assert_close(var[i], want_var.expand_as(var[i]), rtol=1e-10, atol=0)
        torch.testing.assert_close(mean[i], want_mean, rtol=1e-9, atol=1e-12)
    # First step: x_{t-1} = x0 exactly (zero variance); the log-variance is the clipped one.
    torch.testing.assert_close(mean[0], x0[0], rtol=1e-12, atol=1e-12)
    assert var[0].abs().max().item() == 0.0
    assert torch.isfinite(log_var).all()


@pytest.mark.parametrize("step", [0, 1, 50, 99])
def test_eps_x0_prev_mean_round_trips(step: int) -> None:
    d = make(T=100)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    t = torch.full((4,), step)
    xt = d.q_sample(x0, t, eps)
    torch.testing.assert_close(d.predict_x0_from_eps(xt, t, eps), x0, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(d.predict_eps_from_x0(xt, t, x0), eps, rtol=1e-7, atol=1e-6)
    mean, _, _ = d.q_posterior(x0, xt, t)
    torch.testing.assert_close(d.predict_x0_from_prev_mean(xt, t, mean), x0, rtol=1e-6, atol=1e-6)


def test_learned_range_endpoints_give_posterior_and_beta() -> None:
    d = make(T=30, var_type=VarType.LEARNED_RANGE)
    x = torch.zeros(30, 1, 2, 2, dtype=torch.float64)
    t = torch.arange(30)
    lo = d.p_mean_variance(torch.cat([x, -torch.ones_like(x)], 1), x, t)
    hi = d.p_mean_variance(torch.cat([x, torch.ones_like(x)], 1), x, t)
    mid = d.p_mean_variance(torch.cat([x, torch.zeros_like(x)], 1), x, t)
    torch.testing.assert_close(lo.log_variance[:, 0, 0, 0], d.posterior_log_variance_clipped)
    torch.testing.assert_close(hi.log_variance[:, 0, 0, 0], d.betas.log())
    # v = 1/2: the geometric mean of β̃ and β (P8).
    geo = 0.5 * (d.posterior_log_variance_clipped + d.betas.log())
    torch.testing.assert_close(mid.log_variance[:, 0, 0, 0], geo)
    torch.testing.assert_close(mid.variance, mid.log_variance.exp())


def test_fixed_variances_and_the_first_step() -> None:
    small = make(T=30, var_type=VarType.FIXED_SMALL)
    large = make(T=30, var_type=VarType.FIXED_LARGE)
    x = torch.zeros(30, 1, 1, 1, dtype=torch.float64)
    t = torch.arange(30)
    ps, pl = small.p_mean_variance(x, x, t), large.p_mean_variance(x, x, t)
    torch.testing.assert_close(ps.variance.flatten(), small.posterior_variance)
    torch.testing.assert_close(pl.variance.flatten()[1:], large.betas[1:])
    # Fixed-large uses β̃ of the second step at t = 0 (the reference's decoder choice).
    assert pl.variance.flatten()[0].item() == large.posterior_variance[1].item()
    assert pl.log_variance.flatten()[0].item() == pytest.approx(
        math.log(large.posterior_variance[1])
    )


def test_learned_variance_is_exp_of_output() -> None:
    d = make(T=10, var_type=VarType.LEARNED)
    x = torch.zeros(2, 1, 2, 2)
    out = torch.cat([x, torch.full_like(x, -3.0)], 1)
    p = d.p_mean_variance(out, x, torch.tensor([0, 9]))
    torch.testing.assert_close(p.log_variance, torch.full_like(x, -3.0))
    torch.testing.assert_close(p.variance, torch.full_like(x, math.exp(-3.0)))


def test_mean_types_agree_on_the_same_x0() -> None:
    base = make(T=40, var_type=VarType.FIXED_SMALL)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(5, 2, 3, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8
    eps = torch.randn(5, 2, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 10, 20, 39])
    xt = base.q_sample(x0, t, eps)
    want, _, _ = base.q_posterior(x0, xt, t)
    outputs = {MeanType.EPSILON: eps, MeanType.X0: x0, MeanType.PREV_MEAN: want}
    for mean_type, out in outputs.items():
        d = make(T=40, var_type=VarType.FIXED_SMALL, mean_type=mean_type)
        p = d.p_mean_variance(out, xt, t, clip_denoised=False)
        torch.testing.assert_close(p.mean, want, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(p.pred_x0, x0, rtol=1e-5, atol=1e-5)


def test_clip_denoised_clips_pred_x0() -> None:
    d = make(T=10, var_type=VarType.FIXED_SMALL, mean_type=MeanType.X0)
    x = torch.zeros(1, 1, 2, 2)
    out = torch.tensor([[[[3.0, -3.0], [0.5, 1.5]]]])
    t = torch.tensor([5])
    assert d.p_mean_variance(out, x, t).pred_x0.abs().max().item() == 1.0
    assert d.p_mean_variance(out, x, t, clip_denoised=False).pred_x0.max().item() == 3.0


SWEEP = list(itertools.product(["linear", "cosine"], list(MeanType), list(VarType)))


@pytest.mark.parametrize(("schedule", "mean_type", "var_type"), SWEEP)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_p_mean_variance_shapes_dtypes_finite(schedule, mean_type, var_type, dtype) -> None:
    T = 1000
    d = GaussianDiffusion(schedules.get(schedule, T), mean_type=mean_type, var_type=var_type)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=dtype)
    c = 6 if var_type.learned else 3
    out = torch.randn(2, c, 4, 4, generator=g, dtype=dtype).clamp(-1, 1)
    t = torch.tensor([0, T - 1])
    p = d.p_mean_variance(out, x, t)
    for name in ("mean", "variance", "log_variance", "pred_x0", "eps"):
        v = getattr(p, name)
        assert v.shape == x.shape and v.dtype == dtype, name
        assert torch.isfinite(v).all(), name
    assert d.betas.dtype == torch.float64


def test_tables_are_copied_to_a_device_once() -> None:
    d = make(T=10)
    a = d.tables_on(torch.device("cpu"))
    assert d.tables_on(torch.device("cpu")) is a
    assert a["betas"].dtype == torch.float64


def test_bad_inputs_give_one_line_errors() -> None:
    d = make(T=10, var_type=VarType.LEARNED_RANGE)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"needs 6 channels; build the model with out_channels=6"):
        d.p_mean_variance(torch.zeros(2, 3, 4, 4), x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 10\)"):
        d.q_sample(x, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="1-d integer tensor"):
        d.q_sample(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="one timestep per example"):
        d.q_sample(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="noise has shape"):
        d.q_sample(x, torch.tensor([0, 1]), torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\]"):
        GaussianDiffusion(torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="MeanType"):
        GaussianDiffusion(schedules.cosine(4), mean_type="epsilon")  # type: ignore[arg-type]
