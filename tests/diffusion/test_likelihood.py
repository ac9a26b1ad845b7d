"""The bound's building blocks (docs/paper.md P10, P12) against closed forms and independent math.

The end-to-end checks of the whole bound (oracle data with a known entropy, the
Monte-Carlo estimator's unbiasedness) live in tests/eval/test_bound_oracle.py.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from conftest import gaussian_oracle
from iddpm.diffusion import schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.likelihood import (
    TANH_CDF_MAX_ABS_ERROR,
    approx_standard_normal_cdf,
    bits_per_dim,
    check_uint8_grid,
    discretized_gaussian_log_likelihood,
    normal_kl,
    prior_bits,
    standard_normal_cdf,
    vb_term_bits,
)

LN2 = math.log(2.0)
GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0


def _grid_images(n: int, shape: tuple[int, ...], seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return GRID[torch.randint(0, 256, (n, *shape), generator=g)].to(dtype)


def _diffusion(T: int = 30, schedule: str = "cosine", **kw) -> GaussianDiffusion:
    return GaussianDiffusion(schedules.get(schedule, T), **kw)


# ---------------------------------------------------------------------- normal_kl
def test_normal_kl_matches_torch_distributions_with_broadcasting() -> None:
    g = torch.Generator().manual_seed(0)
    m1, m2 = (
        torch.randn(5, 1, 3, generator=g, dtype=torch.float64),
        torch.randn(4, 1, dtype=torch.float64, generator=g),
    )
    lv1, lv2 = (
        2 * torch.randn(5, 4, 3, generator=g, dtype=torch.float64),
        torch.randn(3, generator=g, dtype=torch.float64),
    )
    ours = normal_kl(m1, lv1, m2, lv2)
    d1 = torch.distributions.Normal(m1.expand(5, 4, 3), (0.5 * lv1).exp())
    d2 = torch.distributions.Normal(m2.expand(5, 4, 3), (0.5 * lv2).exp().expand(5, 4, 3))
    assert ours.shape == (5, 4, 3)
    torch.testing.assert_close(
        ours, torch.distributions.kl_divergence(d1, d2), rtol=1e-12, atol=1e-12
    )


def test_normal_kl_is_accurate_in_float32_for_near_equal_variances() -> None:
    # Late steps compare Gaussians whose log-variances differ by δ ~ 1e-4 and T terms are
    # summed. The naive −1 − δ + e^δ form has an absolute error ~ float32 eps per term;
    # the expm1 form's error is ~ eps·δ.
    delta = torch.logspace(-6, -2, 50, dtype=torch.float64)
    exact = 0.5 * (torch.expm1(delta) - delta)
    d32 = delta.float()
    zero = torch.zeros(50)
    bound = 4 * torch.finfo(torch.float32).eps * delta
    ours = normal_kl(zero, d32, zero, zero).double()
    assert ((ours - exact).abs() <= bound).all()
    naive = (0.5 * (-1.0 - d32 + torch.exp(d32))).double()
    assert not ((naive - exact).abs() <= bound).all(), "the test must be able to fail"


# ---------------------------------------------------------------------- CDFs
def test_standard_normal_cdf_matches_mpmath_including_far_tails() -> None:
    xs = [-30.0, -8.0, -2.5, -1e-3, 0.0, 0.7, 5.0]
    ours = standard_normal_cdf(torch.tensor(xs, dtype=torch.float64))
    ref = torch.tensor([float(mpmath.ncdf(x)) for x in xs], dtype=torch.float64)
    torch.testing.assert_close(ours, ref, rtol=1e-13, atol=0.0)


def test_tanh_cdf_error_is_the_documented_maximum() -> None:
    x = torch.linspace(-10, 10, 400_001, dtype=torch.float64)
    err = (approx_standard_normal_cdf(x) - standard_normal_cdf(x)).abs().max().item()
    assert TANH_CDF_MAX_ABS_ERROR * 0.99 < err <= TANH_CDF_MAX_ABS_ERROR


# ---------------------------------------------------------------------- decoder
def _bin_probs(mean: float, log_scale: float, exact: bool, dtype=torch.float64) -> torch.Tensor:
    x = GRID.to(dtype)
    ll = discretized_gaussian_log_likelihood(
        x, torch.tensor(mean, dtype=dtype), torch.tensor(log_scale, dtype=dtype), exact=exact
    )
    return ll.double().exp()


@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
def test_decoder_probabilities_over_all_256_bins_sum_to_one(exact, dtype, tol) -> None:
    # Interior bins share edges and the edge bins are open, so the masses telescope to 1
    # for any monotone CDF (the tanh one too); the 1e-12 floors add at most 256e-12.
    for mean in (-1.3, -1.0, -0.31, 0.0, 0.5, 0.999, 1.4):
        for log_scale in (-9.0, -5.5, -3.0, -1.0, 0.5):
            total = _bin_probs(mean, log_scale, exact, dtype).sum().item()
            assert abs(total - 1.0) < tol, (mean, log_scale, total)


def test_exact_decoder_matches_high_precision_bin_masses_in_the_tails() -> None:
    mpmath.mp.dps = 50
    # (uint8 level, mean, log σ): bins 0 to 80σ away from the mean, on both sides.
    for k, mean, log_scale in [
        (153, 0.5, -4.0),
        (153, -0.9, -4.0),
        (128, 1e-3, -7.0),
        (242, -0.4, -2.0),
        (5, 0.3, -1.0),
        (100, -0.2168, -6.0),
    ]:
        sd = mpmath.e ** mpmath.mpf(log_scale)
        lo = (mpmath.mpf(k) / mpmath.mpf(127.5) - 1 - mpmath.mpf(1) / 255 - mean) / sd
        hi = lo + mpmath.mpf(2) / 255 / sd
        ref = float(mpmath.log(mpmath.ncdf(hi) - mpmath.ncdf(lo)))
        ours = discretized_gaussian_log_likelihood(
            GRID[k],
            torch.tensor(mean, dtype=torch.float64),
            torch.tensor(log_scale, dtype=torch.float64),
        ).item()
        if ref > math.log(1e-12):
            assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12), (k, mean, log_scale)
        else:
            assert ours == pytest.approx(math.log(1e-12)), "mass below the floor is floored"


def test_tanh_decoder_bins_differ_from_exact_by_at_most_twice_the_cdf_error() -> None:
    for mean in (-0.8, 0.0, 0.33):
        for log_scale in (-5.0, -3.0, -1.0):
            diff = (_bin_probs(mean, log_scale, False) - _bin_probs(mean, log_scale, True)).abs()
            assert diff.max().item() <= 2 * TANH_CDF_MAX_ABS_ERROR + 1e-12


def test_tanh_decoder_is_the_reference_formula() -> None:
    # Reference semantics: tanh CDF, probabilities clamped at 1e-12 before the log, edge
    # bins selected by x < −0.999 / x > 0.999, the middle as a difference of CDFs.
    g = torch.Generator().manual_seed(0)
    x = GRID[torch.randint(0, 256, (2000,), generator=g)].float()
    means = x + 0.05 * torch.randn(2000, generator=g)
    log_scales = -6 + 5 * torch.rand(2000, generator=g)
    inv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv * (x - means + 1 / 255))
    cdf_min = approx_standard_normal_cdf(inv * (x - means - 1 / 255))
    want = torch.where(
        x < -0.999,
        torch.log(cdf_plus.clamp(min=1e-12)),
        torch.where(
            x > 0.999,
            torch.log((1 - cdf_min).clamp(min=1e-12)),
            torch.log((cdf_plus - cdf_min).clamp(min=1e-12)),
        ),
    )
    got = discretized_gaussian_log_likelihood(x, means, log_scales, exact=False)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_decoder_edge_bins_are_open_to_infinity() -> None:
    # Far beyond the edges all mass falls in the edge bin: log P = 0, not log(tiny).
    for exact in (True, False):
        ll = discretized_gaussian_log_likelihood(
            torch.tensor([-1.0, 1.0]), torch.tensor([-3.0, 3.0]), torch.tensor(-4.0), exact=exact
        )
        torch.testing.assert_close(ll, torch.zeros(2), atol=1e-6, rtol=0)


def test_decoder_is_finite_with_finite_gradients_for_extreme_inputs() -> None:
    x = GRID[[0, 3, 128, 200, 255]].float()
    for mean, log_scale in [(40.0, -20.0), (-40.0, -20.0), (0.0, 15.0), (0.003, -30.0)]:
        m = torch.full_like(x, mean, requires_grad=True)
        s = torch.full_like(x, log_scale, requires_grad=True)
        ll = discretized_gaussian_log_likelihood(x, m, s)
        ll.sum().backward()
        assert torch.isfinite(ll).all() and (ll <= 0).all() and (ll >= math.log(1e-12) - 1e-4).all()
        assert torch.isfinite(m.grad).all() and torch.isfinite(s.grad).all()


def test_check_uint8_grid_names_the_mapping() -> None:
    check_uint8_grid(GRID)
    for bad in (torch.tensor([0.5]), torch.tensor([1.01]), torch.tensor([-1.02])):
        with pytest.raises(ValueError, match=r"not on the uint8 grid .*x/127.5 − 1"):
            check_uint8_grid(bad)


# ---------------------------------------------------------------------- vb and prior terms
def test_vb_term_is_the_posterior_kl_in_bits_and_the_decoder_at_t0() -> None:
    d = _diffusion(20, mean_type=MeanType.X0, var_type=VarType.LEARNED)
    x0 = _grid_images(4, (1, 2, 2), seed=1)
    g = torch.Generator().manual_seed(2)
    x_t = x0 + 0.3 * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    pred_x0 = (x0 + 0.05 * torch.randn(x0.shape, generator=g, dtype=x0.dtype)).clamp(-1, 1)
    log_var = -3.0 + torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    t = torch.tensor([0, 1, 7, 19])
    out = vb_term_bits(d, torch.cat([pred_x0, log_var], 1), x0, x_t, t)["output"]
    # By hand: the posterior with x0 and with x̂0 (P3), same formula, same clipped variance.
    c1 = d.posterior_mean_coef1[t].reshape(-1, 1, 1, 1)
    c2 = d.posterior_mean_coef2[t].reshape(-1, 1, 1, 1)
    true_lv = d.posterior_log_variance_clipped[t].reshape(-1, 1, 1, 1)
    mean_p = c1 * pred_x0 + c2 * x_t
    kl = 0.5 * (-1 + log_var - true_lv + (true_lv - log_var).exp())
    kl = kl + 0.5 * (c1 * x0 + c2 * x_t - mean_p) ** 2 / log_var.exp()
    dec = -discretized_gaussian_log_likelihood(x0, mean_p, 0.5 * log_var)
    torch.testing.assert_close(out[1:], kl[1:].mean((1, 2, 3)) / LN2)
    torch.testing.assert_close(out[:1], dec[:1].mean((1, 2, 3)) / LN2)


def test_prior_is_the_closed_form_kl_to_the_standard_normal() -> None:
    d = _diffusion(50, "linear")
    x0 = _grid_images(3, (2, 2, 2), seed=3)
    abar = d.alphas_cumprod[-1]
    kl = 0.5 * (abar * x0**2 + (1 - abar) - 1 - torch.log(1 - abar))
    torch.testing.assert_close(prior_bits(d, x0), kl.mean((1, 2, 3)) / LN2)


# ---------------------------------------------------------------------- bits_per_dim
def _counting(model_fn):
    calls: list[int] = []

    def fn(x_t, t, **kw):
        calls.append(x_t.shape[0])
        return model_fn(x_t, t, **kw)

    return fn, calls


def test_bits_per_dim_shapes_totals_and_batched_calls() -> None:
    d = _diffusion(23, var_type=VarType.LEARNED_RANGE)
    x0 = _grid_images(3, (1, 2, 2), seed=4)
    model, calls = _counting(gaussian_oracle(d, 0.0, 0.5))
    seen: list[tuple[int, int]] = []
    r = bits_per_dim(
        model,
        d,
        x0,
        timestep_batch=5,
        generator=torch.Generator().manual_seed(0),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert calls == [15, 15, 15, 15, 9]  # N·k inputs per call, ceil(23/5) calls
    assert seen == [(5, 23), (10, 23), (15, 23), (20, 23), (23, 23)]
    for name in ("vb_bpd", "mse", "x0_mse"):
        v = getattr(r, name)
        assert v.shape == (3, 23) and v.dtype == torch.float64 and torch.isfinite(v).all()
    torch.testing.assert_close(r.total_bpd, r.prior_bpd + r.vb_bpd.sum(1))
    torch.testing.assert_close(r.prior_bpd, prior_bits(d, x0))


def test_bits_per_dim_does_not_depend_on_timestep_batch() -> None:
    # Step t always gets the (t+1)-th noise draw, whatever the chunking.
    d = _diffusion(21, var_type=VarType.LEARNED)
    x0 = _grid_images(2, (1, 3, 3), seed=5)
    model = gaussian_oracle(d, 0.1, 0.4)
    runs = [
        bits_per_dim(model, d, x0, timestep_batch=k, generator=torch.Generator().manual_seed(7))
        for k in (1, 4, 21, 64)
    ]
    for r in runs[1:]:
        torch.testing.assert_close(r.vb_bpd, runs[0].vb_bpd, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r.mse, runs[0].mse, rtol=1e-12, atol=1e-12)


def test_bits_per_dim_noise_for_step_t_is_the_t_th_draw() -> None:
    d = _diffusion(21, var_type=VarType.LEARNED)
    x0 = _grid_images(2, (1, 2, 2), seed=6)
    model = gaussian_oracle(d, 0.0, 0.5)
    r = bits_per_dim(model, d, x0, timestep_batch=8, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    for t in range(d.num_timesteps):
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        tt = torch.full((2,), t)
        x_t = d.q_sample(x0, tt, noise)
        vb = vb_term_bits(d, model(x_t, tt), x0, x_t, tt)["output"]
        torch.testing.assert_close(r.vb_bpd[:, t], vb)


def _tiny_unet_fn():
    """A very small random UNet (1×8×8, learned-range output) as model_fn."""
    from iddpm.config import UNetConfig
    from iddpm.model.unet import UNet

    torch.manual_seed(0)
    cfg = UNetConfig(
        image_size=8, in_channels=1, out_channels=2, model_channels=8, num_res_blocks=1,
        attention_resolutions=(), channel_mult=(1,), num_heads=1, num_groups=4,
    )  # fmt: skip
    net = UNet(cfg).eval()
    with torch.no_grad():
        for p in net.parameters():  # the zero-initialised output layers too
            p.add_(0.05 * torch.randn(p.shape))
    return lambda x_t, t, **kw: net(x_t.float(), t, **kw)


def _per_image_runs(model, d, x0, seed: int, plan) -> list[torch.Tensor]:
    """[N, 1 + 2T] (total, vb terms, mse) per image for each (batch, timestep_batch) of
    `plan`, image i always with the generator of (seed, i)."""
    from iddpm.diffusion.samplers import per_sample_generators

    runs = []
    for batch, timestep_batch in plan:
        out = []
        for lo in range(0, len(x0), batch):
            gens = per_sample_generators(seed, range(lo, min(lo + batch, len(x0))))
            r = bits_per_dim(
                model, d, x0[lo : lo + batch], timestep_batch=timestep_batch, generator=gens
            )
            out.append(torch.cat([r.total_bpd[:, None], r.vb_bpd, r.mse], dim=1))
        runs.append(torch.cat(out))
    return runs


def test_bits_per_dim_per_image_does_not_depend_on_the_batch_size(monkeypatch) -> None:
    # Issue 9: image i's noise at step t is a function of (seed, i, t) only. 64 images in
    # batches of 64, 7 and 1 with different timestep batches; blocks of 8 noise steps
    # (instead of NOISE_BLOCK) are crossed inside calls. The oracle computes elementwise,
    # so everything is bitwise equal.
    from iddpm.diffusion import likelihood

    monkeypatch.setattr(likelihood, "NOISE_BLOCK", 8)
    d = _diffusion(20, var_type=VarType.LEARNED_RANGE)
    x0 = _grid_images(64, (1, 2, 2), seed=11)
    model = gaussian_oracle(d, 0.1, 0.4)
    whole, *parts = _per_image_runs(model, d, x0, 3, [(64, 20), (7, 6), (1, 7)])
    for part in parts:
        torch.testing.assert_close(part, whole, rtol=0, atol=0)
    other = _per_image_runs(model, d, x0[:7], 4, [(7, 6)])[0]
    assert not torch.equal(other, whole[:7])  # the seed matters


def test_bits_per_dim_of_a_network_agrees_across_batch_sizes_to_float32_rounding(
    monkeypatch,
) -> None:
    # A float32 network's own arithmetic may round differently for another batch shape
    # (matrix kernels differ), so here the agreement is to float32 resolution; with a
    # batch-dependent noise rule the results would differ by O(1) bits.
    from iddpm.diffusion import likelihood

    monkeypatch.setattr(likelihood, "NOISE_BLOCK", 4)  # cross blocks at T = 10
    d = _diffusion(10, var_type=VarType.LEARNED_RANGE)
    x0 = _grid_images(14, (1, 8, 8), seed=12, dtype=torch.float32)
    whole, part = _per_image_runs(_tiny_unet_fn(), d, x0, 3, [(14, 10), (7, 3)])
    torch.testing.assert_close(part, whole, rtol=1e-5, atol=1e-6)


def test_bits_per_dim_wants_one_generator_per_image() -> None:
    d = _diffusion(21, var_type=VarType.LEARNED)
    x0 = _grid_images(3, (1, 2, 2), seed=9)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    with pytest.raises(ValueError, match="got 2 generators for 3 images; pass one generator"):
        bits_per_dim(gaussian_oracle(d, 0.0, 0.5), d, x0, generator=gens)


def test_bits_per_dim_tiles_per_image_model_kwargs() -> None:
    d = _diffusion(21, var_type=VarType.FIXED_SMALL)
    x0 = _grid_images(3, (1, 2, 2), seed=7)
    seen: list[torch.Tensor] = []

    def model(x_t, t, y, scale):
        seen.append(y)
        return x_t * scale

    bits_per_dim(model, d, x0, model_kwargs={"y": torch.arange(3), "scale": 0.0}, timestep_batch=4)
    # Row r of a replicated batch is image r mod N, so its label must be y[r mod N].
    assert [len(y) for y in seen] == [12] * 5 + [3]
    for y in seen:
        assert torch.equal(y, torch.arange(len(y)) % 3)
    with pytest.raises(ValueError, match=r"model_kwargs\['y'\] has 2 rows for 3 images"):
        bits_per_dim(model, d, x0, model_kwargs={"y": torch.arange(2), "scale": 0.0})


def test_vb_terms_in_float32_agree_with_float64_at_every_step() -> None:
    d = _diffusion(1000, var_type=VarType.LEARNED_RANGE)
    model = gaussian_oracle(d, 0.0, 0.5)
    x0 = _grid_images(1, (1, 4, 4), seed=8).expand(1000, 1, 4, 4)
    t = torch.arange(1000)
    x_t = d.q_sample(
        x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=x0.dtype)
    )
    out = {
        dt: vb_term_bits(d, model(x_t.to(dt), t), x0.to(dt), x_t.to(dt), t)["output"]
        for dt in (torch.float32, torch.float64)
    }
    assert out[torch.float32].dtype == torch.float32
    # Summed over all 1000 steps the float32 error stays far below the reported 0.01 bpd.
    torch.testing.assert_close(
        out[torch.float32].double(), out[torch.float64], rtol=1e-3, atol=1e-6
    )
    assert abs(out[torch.float32].double().sum() - out[torch.float64].sum()) < 1e-4


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"timestep_batch": 0}, r"timestep_batch must be an integer >= 1"),
        ({"x0": torch.full((2, 1, 2, 2), 0.5)}, r"not on the uint8 grid"),
        ({"x0": torch.zeros(0, 1, 2, 2)}, r"x0 must be a non-empty batch"),
    ],
)
def test_bits_per_dim_rejects_bad_inputs(kwargs, match) -> None:
    d = _diffusion(21, var_type=VarType.LEARNED)
    x0 = kwargs.pop("x0", _grid_images(2, (1, 2, 2), seed=9))
    with pytest.raises(ValueError, match=match):
        bits_per_dim(gaussian_oracle(d, 0.0, 0.5), d, x0, **kwargs)
