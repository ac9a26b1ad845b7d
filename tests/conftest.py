"""Shared fixtures: tiny configs, seeded generators and analytic oracle models.

The oracles are exact denoisers for data whose posterior is known in closed form, so
samplers and the bound can be checked against exact answers without any training.
Each oracle is built against the diffusion it will be run with and answers
model_fn(x_t, t) with t the index of *that* process, in its output format (ε channels,
plus a variance channel block for learned variance types).
"""

from __future__ import annotations

import math

import pytest
import torch

from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType


def _tables(diffusion: GaussianDiffusion, t: torch.Tensor, x: torch.Tensor):
    def at(name: str) -> torch.Tensor:
        return getattr(diffusion, name).to(x.device)[t].to(torch.float64).reshape(-1, 1, 1, 1)

    return at


def _format_output(
    diffusion: GaussianDiffusion,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0_mean: torch.Tensor,
    x0_var: torch.Tensor,
) -> torch.Tensor:
    """Encode the exact Gaussian reverse step (mean from E[x0|x_t], variance
    β̃ + coef1²·Var[x0|x_t]) in the diffusion's output parameterisation. All float64."""
    at = _tables(diffusion, t, x_t)
    xt = x_t.to(torch.float64)
    if diffusion.mean_type is MeanType.EPSILON:
        mean_out = (xt * at("sqrt_recip_alphas_cumprod") - x0_mean) / at(
            "sqrt_recipm1_alphas_cumprod"
        )
    elif diffusion.mean_type is MeanType.X0:
        mean_out = x0_mean
    else:
        mean_out = at("posterior_mean_coef1") * x0_mean + at("posterior_mean_coef2") * xt
    if not diffusion.var_type.learned:
        return mean_out.to(x_t.dtype)
    var = at("posterior_variance") + at("posterior_mean_coef1") ** 2 * x0_var
    log_var = torch.log(var.clamp_min(1e-30))
    if diffusion.var_type is VarType.LEARNED_RANGE:
        lo, hi = at("posterior_log_variance_clipped"), at("log_betas")
        log_var = 2.0 * (log_var - lo) / (hi - lo) - 1.0
    return torch.cat([mean_out, log_var.expand_as(mean_out)], dim=1).to(x_t.dtype)


def gaussian_oracle(diffusion: GaussianDiffusion, mu: float, s: float):
    """Exact denoiser for x0 ~ N(mu, s² I): E[x0|x_t] and Var[x0|x_t] in closed form."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
        at = _tables(diffusion, t, x_t)
        abar = at("alphas_cumprod")
        xt = x_t.to(torch.float64)
        denom = abar * s**2 + (1.0 - abar)
        x0_mean = mu + abar.sqrt() * s**2 * (xt - abar.sqrt() * mu) / denom
        x0_var = (s**2 * (1.0 - abar) / denom).expand_as(xt)
        return _format_output(diffusion, x_t, t, x0_mean, x0_var)

    return model_fn


def discrete_oracle(diffusion: GaussianDiffusion, points: torch.Tensor):
    """Exact denoiser for data whose every dimension is independently uniform on `points`
    (values in [−1, 1]); E[x0|x_t] and Var[x0|x_t] are softmax-weighted moments."""
    pts = points.to(torch.float64)

    def model_fn(x_t: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
        at = _tables(diffusion, t, x_t)
        abar = at("alphas_cumprod").unsqueeze(-1)
        xt = x_t.to(torch.float64).unsqueeze(-1)
        p = pts.to(x_t.device)
        logits = -((xt - abar.sqrt() * p) ** 2) / (2.0 * (1.0 - abar))
        w = torch.softmax(logits, dim=-1)
        x0_mean = (w * p).sum(-1)
        x0_var = ((w * p**2).sum(-1) - x0_mean**2).clamp_min(0.0)
        return _format_output(diffusion, x_t, t, x0_mean, x0_var)

    return model_fn


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def _one_thread():
    # The tests use tiny tensors, for which thread start-up costs more than it saves: a
    # tiny-model step measured 6 ms on one thread and 280 ms on two of a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


LN2 = math.log(2.0)


def tiny_experiment(num_timesteps: int = 20, num_classes: int | None = None):
    """A seconds-fast digits-shaped config (1×8×8, learned-range variance, cosine)."""
    from iddpm.config import DiffusionConfig, ExperimentConfig, TrainConfig, UNetConfig

    return ExperimentConfig(
        diffusion=DiffusionConfig(num_timesteps=num_timesteps),
        model=UNetConfig(
            image_size=8,
            in_channels=1,
            out_channels=2,
            model_channels=32,
            num_res_blocks=1,
            attention_resolutions=(4,),
            channel_mult=(1, 2),
            num_heads=2,
            num_classes=num_classes,
        ),
        train=TrainConfig(
            data="digits",
            random_flip=False,
            batch_size=16,
            lr=1e-3,
            ema_rates=(0.99,),
            steps=4,
            log_every=2,
            checkpoint_every=2,
            class_cond=num_classes is not None,
        ),
    )


def save_random_run(run_dir, cfg, seed: int = 0):
    """A run directory whose checkpoint holds a UNet with small random weights everywhere
    (also in the zero-initialised output layers, so every path matters)."""
    from iddpm.build import build_unet
    from iddpm.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    model = build_unet(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0.0, 0.05)
    return save_checkpoint(run_dir, {"model": model.state_dict(), "ema": {}}, cfg, step=0)


@pytest.fixture
def random_run(tmp_path):
    """(run_dir, config) of a tiny untrained model with random weights."""
    cfg = tiny_experiment()
    save_random_run(tmp_path / "run", cfg)
    return tmp_path / "run", cfg


class PixelwiseModel(torch.nn.Module):
    """A stand-in network that computes elementwise (2C output channels: ε-like and
    learned-range v), so its results for one image are bitwise the same in any batch."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, **_: object) -> torch.Tensor:
        s = t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)) / 1000.0
        return torch.cat([0.3 * x + 0.1 * s, 0.5 * torch.tanh(x) - 0.2], dim=1)


def pixelwise_loaded_model(num_timesteps: int = 20):
    """A `LoadedModel` of the tiny digits config whose network is `PixelwiseModel`."""
    from pathlib import Path

    from iddpm.build import LoadedModel

    return LoadedModel(tiny_experiment(num_timesteps), PixelwiseModel(), Path("pixelwise"))


def mixture_posterior(diffusion: GaussianDiffusion, mus, s: float, priors, x_t, t):
    """For x0 | y ~ N(mus[y], s² I) with p(y) = priors[y] (one class per image): the
    class logits log p(y) + log q(x_t | y) up to a shared constant [N, K], and the
    per-class E[x0 | x_t, y] [K, N, ...] and Var[x0 | x_t, y] (a scalar per row), float64."""
    at = _tables(diffusion, t, x_t)
    abar = at("alphas_cumprod")
    xt = x_t.to(torch.float64)
    v = abar * s**2 + (1.0 - abar)  # q(x_t | y) = N(√ᾱ μ_y, v I)
    mu = torch.as_tensor(mus, dtype=torch.float64, device=x_t.device).reshape(-1, 1, 1, 1, 1)
    dims = tuple(range(1, xt.ndim))
    sq = ((xt.unsqueeze(0) - abar.sqrt() * mu) ** 2).sum(dim=tuple(d + 1 for d in dims))
    logp = torch.log(torch.as_tensor(priors, dtype=torch.float64, device=x_t.device))
    logits = logp.unsqueeze(1) - sq / (2.0 * v.reshape(1, -1))  # [K, N]
    x0_mean = mu + abar.sqrt() * s**2 * (xt.unsqueeze(0) - abar.sqrt() * mu) / v
    x0_var = s**2 * (1.0 - abar) / v
    return logits.T, x0_mean, x0_var


def mixture_oracle(diffusion: GaussianDiffusion, mus, s: float, priors=None):
    """Exact denoiser for the class mixture x0 | y ~ N(mus[y], s² I): model_fn(x_t, t, y)
    is the class-conditional one for y < K and the unconditional one (the label-marginal
    posterior) for y = K (the null class of classifier-free guidance) or no y."""
    k = len(mus)
    priors = priors if priors is not None else [1.0 / k] * k

    def model_fn(x_t: torch.Tensor, t: torch.Tensor, y=None, **_: object) -> torch.Tensor:
        logits, m, var = mixture_posterior(diffusion, mus, s, priors, x_t, t)
        w = torch.softmax(logits, dim=1).T.reshape(k, -1, *[1] * (x_t.ndim - 1))  # p(y | x_t)
        unc_mean = (w * m).sum(0)
        unc_var = (w * (var + m**2)).sum(0) - unc_mean**2
        if y is None:
            return _format_output(diffusion, x_t, t, unc_mean, unc_var)
        yy = y.to(x_t.device).long()
        cond = yy < k
        pick = yy.clamp(max=k - 1)
        rows = torch.arange(x_t.shape[0], device=x_t.device)
        c_mean = m[pick, rows]
        c_var = var.expand_as(c_mean)
        sel = cond.reshape(-1, *[1] * (x_t.ndim - 1))
        x0_mean = torch.where(sel, c_mean, unc_mean)
        x0_var = torch.where(sel, c_var, unc_var.expand_as(c_mean))
        return _format_output(diffusion, x_t, t, x0_mean, x0_var)

    return model_fn


def mixture_classifier(diffusion: GaussianDiffusion, mus, s: float, priors=None):
    """The exact noise-aware classifier of the mixture: logits of p(y | x_t) [N, K]
    (differentiable in x_t)."""
    k = len(mus)
    priors = priors if priors is not None else [1.0 / k] * k

    def classifier_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return mixture_posterior(diffusion, mus, s, priors, x_t, t)[0]

    return classifier_fn
