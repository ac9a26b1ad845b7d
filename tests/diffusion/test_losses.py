"""Training losses (docs/paper.md P9, P11): targets, stop-gradient, where λ goes, config sweep."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from conftest import gaussian_oracle
from iddpm.diffusion import schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.likelihood import bits_per_dim, vb_term_bits
from iddpm.diffusion.losses import LossKind, training_losses

GRID = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0


def _x0(n: int = 4, shape=(2, 3, 3), seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return GRID[torch.randint(0, 256, (n, *shape), generator=g)].to(dtype)


def _diffusion(T=40, schedule="cosine", mean_type=MeanType.EPSILON, var_type=VarType.LEARNED_RANGE):
    return GaussianDiffusion(schedules.get(schedule, T), mean_type, var_type)


def _leaf_model(d: GaussianDiffusion, x0: torch.Tensor, seed: int = 1):
    """A 'model' whose output is a leaf tensor, so gradients w.r.t. each channel are visible."""
    c = x0.shape[1] * (2 if d.var_type.learned else 1)
    g = torch.Generator().manual_seed(seed)
    out = 0.3 * torch.randn(x0.shape[0], c, *x0.shape[2:], generator=g, dtype=x0.dtype)
    out.requires_grad_(True)
    return (lambda x_t, t: out), out


# ---------------------------------------------------------------------- kinds and errors
def test_kind_accepts_enum_or_its_string_value() -> None:
    d = _diffusion()
    x0, t = _x0(), torch.tensor([0, 5, 20, 39])
    noise = torch.randn_like(x0)
    model = gaussian_oracle(d, 0.0, 0.5)
    for kind in LossKind:
        a = training_losses(model, d, x0, t, noise, kind=kind)
        b = training_losses(model, d, x0, t, noise, kind=kind.value)
        torch.testing.assert_close(a["loss"], b["loss"], rtol=0, atol=0)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"kind": "kl"}, r"unknown loss kind 'kl'; choose one of: simple, hybrid, vlb"),
        ({"vlb_weight": 0.0}, r"vlb_weight must be a finite number > 0, got 0.0"),
        ({"vlb_weight": float("nan")}, r"vlb_weight must be a finite number > 0"),
        ({"t": torch.tensor([0, 1, 2])}, r"got 3 timesteps for a batch of 4"),
        ({"t": torch.tensor([0, 1, 2, 40])}, r"timesteps must lie in \[0, 40\)"),
        ({"t": torch.zeros(4)}, r"timesteps must be a 1-d integer tensor"),
        ({"noise": torch.zeros(4, 2, 3, 2, dtype=torch.float64)}, r"noise has shape .* must match"),
        ({"x0": torch.zeros(4)}, r"x0 must be a batch \[N, C, ...\]"),
    ],
)
def test_training_losses_reject_bad_inputs_with_one_line(change, match) -> None:
    d = _diffusion()
    args = {"x0": _x0(), "t": torch.tensor([0, 1, 2, 3]), "noise": None, **change}
    x0, t, noise = args.pop("x0"), args.pop("t"), args.pop("noise")
    with pytest.raises(ValueError, match=match):
        training_losses(gaussian_oracle(d, 0.0, 0.5), d, x0, t, noise, **args)


def test_model_with_the_wrong_channel_count_is_named() -> None:
    d = _diffusion(var_type=VarType.LEARNED)
    x0 = _x0()
    with pytest.raises(ValueError, match=r"needs 4 channels; build the model with out_channels=4"):
        training_losses(lambda x_t, t: x_t, d, x0, torch.zeros(4, dtype=torch.long))


def test_noise_is_drawn_from_the_explicit_generator() -> None:
    d = _diffusion()
    x0, t = _x0(), torch.tensor([3, 1, 4, 1])
    model = gaussian_oracle(d, 0.0, 0.5)
    runs = [
        training_losses(model, d, x0, t, generator=torch.Generator().manual_seed(s))["mse"]
        for s in (5, 5, 6)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.equal(runs[0], runs[2])


# ---------------------------------------------------------------------- targets
@pytest.mark.parametrize("mean_type", list(MeanType))
def test_mse_is_zero_for_a_model_that_outputs_its_target(mean_type) -> None:
    d = _diffusion(mean_type=mean_type, var_type=VarType.FIXED_SMALL)
    x0, t = _x0(), torch.tensor([0, 7, 22, 39])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=x0.dtype)
    x_t = d.q_sample(x0, t, noise)
    c1 = d.posterior_mean_coef1[t].reshape(-1, 1, 1, 1)
    c2 = d.posterior_mean_coef2[t].reshape(-1, 1, 1, 1)
    target = {MeanType.EPSILON: noise, MeanType.X0: x0, MeanType.PREV_MEAN: c1 * x0 + c2 * x_t}
    out = training_losses(lambda x, tt: target[mean_type], d, x0, t, noise, kind="simple")
    torch.testing.assert_close(out["mse"], torch.zeros(4, dtype=x0.dtype), rtol=0, atol=1e-24)
    # ... and a wrong output costs the mean over dimensions of the squared error.
    out = training_losses(lambda x, tt: target[mean_type] + 0.5, d, x0, t, noise, kind="simple")
    torch.testing.assert_close(out["mse"], torch.full((4,), 0.25, dtype=x0.dtype))


def test_vb_is_the_unclipped_term_in_bits_with_the_decoder_at_t0() -> None:
    d = _diffusion(var_type=VarType.LEARNED)
    x0, t = _x0(), torch.tensor([0, 0, 9, 39])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3), dtype=x0.dtype)
    model, out = _leaf_model(d, x0)
    vb = training_losses(model, d, x0, t, noise)["vb"]
    x_t = d.q_sample(x0, t, noise)
    want = vb_term_bits(d, out, x0, x_t, t, clip_denoised=False)["output"]
    torch.testing.assert_close(vb, want)
    clipped = vb_term_bits(d, 30.0 * out, x0, x_t, t, clip_denoised=True)["output"]
    unclipped = training_losses(lambda *_: 30.0 * out, d, x0, t, noise)["vb"]
    assert not torch.allclose(unclipped, clipped), "training must not clip x̂0"


# ---------------------------------------------------------------------- stop-gradient
def _channel_grads(value: torch.Tensor, out: torch.Tensor, c: int):
    (g,) = torch.autograd.grad(value.sum(), out, retain_graph=True, allow_unused=False)
    return g[:, :c], g[:, c:]


@pytest.mark.parametrize("mean_type", list(MeanType))
@pytest.mark.parametrize("var_type", [VarType.LEARNED, VarType.LEARNED_RANGE])
def test_hybrid_vb_term_trains_only_the_variance(mean_type, var_type) -> None:
    d = _diffusion(mean_type=mean_type, var_type=var_type)
    x0, t = _x0(), torch.tensor([0, 3, 17, 39])
    model, out = _leaf_model(d, x0)
    res = training_losses(model, d, x0, t, kind="hybrid")
    g_mean, g_var = _channel_grads(res["vb"], out, x0.shape[1])
    assert torch.equal(g_mean, torch.zeros_like(g_mean))  # exactly zero: stop-gradient
    assert (g_var.abs().flatten(1).sum(1) > 0).all()  # every example's Σ gets a signal
    # So the loss's gradient on the mean channels is exactly the MSE's.
    lg_mean, lg_var = _channel_grads(res["loss"], out, x0.shape[1])
    mg_mean, _ = _channel_grads(res["mse"], out, x0.shape[1])
    assert torch.equal(lg_mean, mg_mean)
    torch.testing.assert_close(lg_var, 0.001 * d.num_timesteps * g_var)


@pytest.mark.parametrize("var_type", list(VarType))
def test_vlb_loss_trains_the_mean_too(var_type) -> None:
    d = _diffusion(var_type=var_type)
    x0, t = _x0(), torch.tensor([0, 3, 17, 39])
    model, out = _leaf_model(d, x0)
    res = training_losses(model, d, x0, t, kind="vlb")
    torch.testing.assert_close(res["loss"], d.num_timesteps * res["vb"])
    (g,) = torch.autograd.grad(res["loss"].sum(), out)
    g_mean = g[:, : x0.shape[1]]
    assert (g_mean.abs().flatten(1).sum(1) > 0).all()
    if var_type.learned:
        assert (g[:, x0.shape[1] :].abs().flatten(1).sum(1) > 0).all()


@pytest.mark.parametrize("var_type", list(VarType))
def test_simple_loss_is_the_mse_alone(var_type) -> None:
    d = _diffusion(var_type=var_type)
    x0, t = _x0(), torch.tensor([0, 3, 17, 39])
    model, out = _leaf_model(d, x0)
    res = training_losses(model, d, x0, t, kind="simple")
    assert torch.equal(res["loss"], res["mse"])
    assert torch.isfinite(res["vb"]).all()  # still reported for per-t logging
    (g,) = torch.autograd.grad(res["loss"].sum(), out)
    assert torch.equal(g[:, x0.shape[1] :], torch.zeros_like(g[:, x0.shape[1] :]))


@pytest.mark.parametrize("var_type", [VarType.FIXED_SMALL, VarType.FIXED_LARGE])
def test_hybrid_with_a_fixed_variance_is_the_mse(var_type) -> None:
    # The vb term would have no gradient at all (mean detached, Σ fixed): not added.
    d = _diffusion(var_type=var_type)
    x0, t = _x0(), torch.tensor([0, 3, 17, 39])
    res = training_losses(_leaf_model(d, x0)[0], d, x0, t, kind="hybrid")
    assert torch.equal(res["loss"], res["mse"])
    assert not res["vb"].requires_grad


# ---------------------------------------------------------------------- where λ goes (P11)
@pytest.mark.parametrize("T", [40, 1000, 4000])
def test_hybrid_adds_lambda_times_T_times_the_sampled_term(T) -> None:
    d = _diffusion(T=T)
    x0 = _x0()
    t = torch.tensor([0, T // 3, T // 2, T - 1])
    res = training_losses(gaussian_oracle(d, 0.0, 0.5), d, x0, t, kind="hybrid")
    # λ·L_vlb with λ = 0.001, L_vlb estimated by T·L_t: the reference's vb·T/1000.
    torch.testing.assert_close(res["loss"] - res["mse"], 0.001 * (T * res["vb"]))
    torch.testing.assert_close(res["loss"] - res["mse"], (T / 1000.0) * res["vb"])
    res2 = training_losses(
        gaussian_oracle(d, 0.0, 0.5),
        d,
        x0,
        t,
        kind="hybrid",
        vlb_weight=0.01,
        noise=None,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(res2["loss"] - res2["mse"], 0.01 * T * res2["vb"])


def test_hybrid_averaged_over_all_t_is_lambda_times_the_full_bound_terms() -> None:
    # mean_t[(T/1000)·L_t] = 0.001·Σ_t L_t: the same x_t draws as bits_per_dim's, so the
    # identity holds per image to float precision, not only in expectation.
    T, n = 50, 3
    d = _diffusion(T=T, var_type=VarType.LEARNED)
    x0 = _x0(n, (1, 2, 2), seed=4)
    model = gaussian_oracle(d, 0.1, 0.4)
    full = bits_per_dim(
        model,
        d,
        x0,
        clip_denoised=False,
        timestep_batch=7,
        generator=torch.Generator().manual_seed(9),
    )
    g = torch.Generator().manual_seed(9)  # bits_per_dim's noise for step t is the t-th draw
    extra = []
    for t in range(T):
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        res = training_losses(model, d, x0, torch.full((n,), t), noise, kind="hybrid")
        extra.append(res["loss"] - res["mse"])
    mean_over_t = torch.stack(extra, 1).mean(1)
    torch.testing.assert_close(mean_over_t, 0.001 * full.vb_bpd.sum(1), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------- config sweep
SWEEP = list(itertools.product(["linear", "cosine"], list(MeanType), list(VarType), list(LossKind)))


@pytest.mark.parametrize(
    "schedule,mean_type,var_type,kind",
    SWEEP,
    ids=["-".join(str(getattr(v, "value", v)) for v in c) for c in SWEEP],
)
def test_every_configuration_gives_finite_per_example_losses(schedule, mean_type, var_type, kind):
    T = 30
    d = _diffusion(T, schedule, mean_type, var_type)
    oracle = gaussian_oracle(d, 0.0, 0.5)

    def model(x_t, t):  # the exact denoiser, nudged so every term is non-trivial
        return oracle(x_t, t) + 0.05 * torch.sin(3.0 * x_t).repeat(
            1, 2 if var_type.learned else 1, 1, 1
        )

    t = torch.tensor([0, 0, T - 1, T - 1, 1, T // 2])
    for dtype in (torch.float32, torch.float64):
        x0 = _x0(6, (1, 3, 3), seed=5, dtype=dtype)
        res = training_losses(
            model, d, x0, t, kind=kind, generator=torch.Generator().manual_seed(1)
        )
        for name in ("loss", "mse", "vb"):
            v = res[name]
            assert v.shape == (6,) and v.dtype == dtype, (name, v.shape, v.dtype)
            assert torch.isfinite(v).all(), (name, v)
        assert (res["vb"] >= -1e-6).all()  # KLs and NLLs of bins are non-negative
        assert not math.isnan(float(res["loss"].sum()))
