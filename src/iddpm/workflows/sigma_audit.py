"""The learned-Σ audit: for each step of a K-step process, the model's own reverse variance
(mean over images, with its 10–90% spread) against Analytic-DPM's optimal variance for the
same model (Bao et al. 2022: σ*² from Γ_n = E‖ε_θ(x_n, n)‖²/d, estimated on training
images and cached like the `analytic` sampler's statistics), with β̃ and β beside them.
It says whether L_hybrid really learned Σ: a learned curve on the analytic one is the
optimum a model with this ε-predictor can have."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from iddpm._tensor import to_model_range
from iddpm.build import LoadedModel, spaced
from iddpm.diffusion.samplers import per_sample_generators
from iddpm.workflows.context import JobContext, StatsConfig
from iddpm.workflows.data import data_for_model
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.statistics import reverse_variance

AUDIT_STEPS = 50


def audit_steps(num_timesteps: int) -> str:
    """The step spec of the audit: AUDIT_STEPS steps evenly spaced in log SNR (dense at
    both ends, where the variances differ most), or all T when T is that small."""
    return f"logsnr{AUDIT_STEPS}" if num_timesteps > AUDIT_STEPS else str(num_timesteps)


@torch.no_grad()
def learned_variance(
    loaded: LoadedModel,
    steps: str,
    images: torch.Tensor,
    seed: int,
    labels: torch.Tensor | None = None,
    batch: int = 256,
) -> np.ndarray:
    """[K, M] mean-over-pixels reverse variance of the model at each step of the process
    `steps` for each of the M images (x_t drawn from q with per-image seeds; `labels` for
    a class-conditional model)."""
    diffusion, model_fn = spaced(loaded.model, loaded.config.diffusion, steps)
    k, m = diffusion.num_timesteps, images.shape[0]
    out = np.zeros((k, m))
    gens = per_sample_generators(seed, range(m))
    noise = torch.stack([torch.randn(images.shape[1:], generator=g) for g in gens])
    noise = noise.to(images.device)
    for step in range(k):
        for lo in range(0, m, batch):
            x0, eps = images[lo : lo + batch], noise[lo : lo + batch]
            t = torch.full((x0.shape[0],), step, dtype=torch.long, device=x0.device)
            x_t = diffusion.q_sample(x0, t, eps)
            kwargs = {} if labels is None else {"y": labels[lo : lo + batch]}
            pred = diffusion.p_mean_variance(model_fn(x_t, t, **kwargs), x_t, t)
            var = pred.variance.expand_as(x_t).flatten(1).mean(1)
            out[step, lo : lo + x0.shape[0]] = var.double().cpu().numpy()
    return out


def sigma_audit(
    loaded: LoadedModel,
    device: torch.device | str,
    stats: StatsConfig,
    progress: Progress = silent,
) -> dict[str, Any]:
    """The audit's curves ([K] lists: t, learned, learned_lo, learned_hi, analytic, small,
    large) and its summary: the mean |log(learned/analytic)| over t."""
    cfg = loaded.config
    steps = audit_steps(cfg.diffusion.num_timesteps)
    diffusion, model_fn = spaced(loaded.model, cfg.diffusion, steps)
    ctx = JobContext(device, progress, stats=stats)
    analytic = reverse_variance(loaded, steps, "analytic", ctx)
    ds = data_for_model(cfg, stats.data or None, "train", stats.num_images)
    x0 = to_model_range(ds.images).to(device)
    labels = None if ds.labels is None else torch.as_tensor(ds.labels, device=device)
    with progress("learned Σ", None, "task"):
        learned = learned_variance(loaded, steps, x0, stats.seed, labels)
    t = model_fn.original_steps(torch.arange(diffusion.num_timesteps))
    mean = learned.mean(1)
    ratio = np.log(mean / analytic.double().cpu().numpy())
    return {
        "steps": steps,
        "t": [int(s) for s in t],
        "learned": mean.tolist(),
        "learned_lo": np.quantile(learned, 0.1, axis=1).tolist(),
        "learned_hi": np.quantile(learned, 0.9, axis=1).tolist(),
        "analytic": analytic.double().cpu().tolist(),
        "small": torch.exp(diffusion.posterior_log_variance_clipped).tolist(),
        "large": diffusion.fixed_large_variance.double().tolist(),
        "mean_abs_log_ratio": float(np.abs(ratio).mean()),
        "num_images": int(x0.shape[0]),
        "var_type": cfg.diffusion.var_type,
    }
