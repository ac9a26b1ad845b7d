"""Dataset bits/dim: the exact variational bound (or its unbiased Monte-Carlo estimate).

Every term of docs/paper.md P10 is included: the decoder L_0, the KL terms L_1…L_{T−1} and the
prior L_T. Images are split across ranks in contiguous blocks and the per-image results are
gathered, so the mean and its standard error are over the whole data set. Image i's noise
(and Monte-Carlo steps) come from its own generator, seeded from (cfg.seed, i) with i its
index in `images`, so per-image results do not depend on the batch size or rank count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from iddpm import distributed
from iddpm._io import write_csv
from iddpm._tensor import to_model_range
from iddpm.build import LoadedModel, spaced
from iddpm.config import EvalConfig
from iddpm.diffusion.likelihood import bits_per_dim
from iddpm.diffusion.likelihood_mc import estimate_bits_per_dim
from iddpm.diffusion.samplers import per_sample_generators


@dataclass
class NllResult:
    """Per-image bits/dim [N] and per-term means [K] (column k = step k of the process run).

    `timesteps` maps each term to the original step index (the strided process keeps K of T).
    """

    total_bpd: np.ndarray
    prior_bpd: np.ndarray
    terms_bpd: np.ndarray | None
    timesteps: np.ndarray
    exact: bool
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def bpd(self) -> float:
        return float(self.total_bpd.mean())

    @property
    def stderr(self) -> float:
        n = len(self.total_bpd)
        return float(self.total_bpd.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

    def summary(self) -> dict[str, float | int | bool]:
        return {
            "bpd": self.bpd,
            "bpd_stderr": self.stderr,
            "prior_bpd": float(self.prior_bpd.mean()),
            "num_images": len(self.total_bpd),
            "num_terms": len(self.timesteps),
            "exact": self.exact,
            **self.extra,
        }


def bound_process(
    loaded: LoadedModel, cfg: EvalConfig, reverse_variance: torch.Tensor | None = None
) -> tuple:
    """(diffusion, model_fn) of the process whose bound is measured: strided by cfg.steps,
    with `reverse_variance` [K] replacing the model's reverse variance when given."""
    diffusion, model_fn = spaced(loaded.model, loaded.config.diffusion, cfg.steps)
    if reverse_variance is not None:
        diffusion = diffusion.with_reverse_variance(reverse_variance)
    return diffusion, model_fn


def bound_of_range(
    loaded: LoadedModel,
    process: tuple,
    images: np.ndarray,
    labels: np.ndarray | None,
    cfg: EvalConfig,
    indices: range,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The bound of images[indices] (global indices: image i's noise comes from (cfg.seed,
    i)) in batches of cfg.batch_size from indices.start: per-image "total" and "prior"
    [n] float64 and, for the exact bound, "terms": the per-term sums over these images [K]."""
    diffusion, model_fn = process
    if loaded.config.model.num_classes is not None and labels is None:
        raise ValueError("the model is class-conditional but the data has no labels")
    totals, priors, terms = [], [], []
    for lo in range(indices.start, indices.stop, cfg.batch_size):
        hi = min(lo + cfg.batch_size, indices.stop)
        x0 = to_model_range(images[lo:hi]).to(device)
        kwargs = {}
        if loaded.config.model.num_classes is not None:
            kwargs["y"] = torch.as_tensor(labels[lo:hi], device=device)
        # CPU generators: the noise, like the result, is the same whatever the device.
        gen = per_sample_generators(cfg.seed, range(lo, hi))
        with torch.no_grad():
            if cfg.mc_timesteps:
                res = estimate_bits_per_dim(
                    model_fn,
                    diffusion,
                    x0,
                    num_samples_per_image=cfg.mc_timesteps,
                    method=cfg.mc_method,
                    model_kwargs=kwargs,
                    generator=gen,
                    timestep_batch=cfg.timestep_batch,
                )
            else:
                res = bits_per_dim(
                    model_fn,
                    diffusion,
                    x0,
                    model_kwargs=kwargs,
                    timestep_batch=cfg.timestep_batch,
                    generator=gen,
                )
                terms.append(res.vb_bpd.double().sum(0).cpu())
        totals.append(res.total_bpd.double().cpu())
        priors.append(res.prior_bpd.double().cpu())
        if progress is not None:
            progress(hi - lo)
    empty = torch.zeros(0, dtype=torch.float64)
    out = {
        "total": torch.cat(totals) if totals else empty,
        "prior": torch.cat(priors) if priors else empty,
    }
    if not cfg.mc_timesteps:
        k = diffusion.num_timesteps
        out["terms"] = torch.stack(terms).sum(0) if terms else torch.zeros(k, dtype=torch.float64)
    return out


def kept_timesteps(process: tuple) -> np.ndarray:
    """The original step of each term of the process's bound."""
    diffusion, model_fn = process
    return model_fn.original_steps(torch.arange(diffusion.num_timesteps)).numpy()


def evaluate_nll(
    loaded: LoadedModel,
    images: np.ndarray,
    labels: np.ndarray | None,
    cfg: EvalConfig,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    reverse_variance: torch.Tensor | None = None,
) -> NllResult:
    """Bits/dim of uint8 NHWC `images` under the model's bound (strided by `cfg.steps`);
    `reverse_variance` [K] replaces the model's reverse variance (e.g. Analytic-DPM's)."""
    process = bound_process(loaded, cfg, reverse_variance)
    mine = distributed.rank_block(len(images), distributed.rank(), distributed.world_size())
    part = bound_of_range(loaded, process, images, labels, cfg, mine, device, progress)
    terms = [part["terms"]] if "terms" in part and len(mine) else []
    return _reduce([part["total"]], [part["prior"]], terms, kept_timesteps(process), cfg,
                   images.shape[0])  # fmt: skip


def _reduce(totals, priors, terms, steps, cfg, n_images) -> NllResult:
    total = torch.cat(totals) if totals else torch.zeros(0, dtype=torch.float64)
    prior = torch.cat(priors) if priors else torch.zeros(0, dtype=torch.float64)
    term_sum = torch.stack(terms).sum(0) if terms else torch.zeros(len(steps), dtype=torch.float64)
    if distributed.world_size() > 1:
        dev = distributed.device()  # nccl reduces GPU tensors only
        total = distributed.all_gather_1d(total.to(dev)).cpu()
        prior = distributed.all_gather_1d(prior.to(dev)).cpu()
        term_sum = distributed.all_reduce_sum(term_sum.to(dev)).cpu()
    exact = cfg.mc_timesteps == 0
    return NllResult(
        total_bpd=total.numpy(),
        prior_bpd=prior.numpy(),
        terms_bpd=(term_sum / max(n_images, 1)).numpy() if exact else None,
        timesteps=steps,
        exact=exact,
    )


def write_terms_csv(path: str | Path, result: NllResult) -> Path:
    """One row per term: index k, original step, mean bits/dim of the term, and its
    cumulative share of the bound (the prior is the last row, step "T")."""
    if result.terms_bpd is None:
        raise ValueError("per-term values exist only for the exact bound; run without --mc")
    prior = float(result.prior_bpd.mean())
    total = float(result.terms_bpd.sum()) + prior
    rows, cum = [], 0.0
    for k, (step, v) in enumerate(zip(result.timesteps, result.terms_bpd)):
        cum += float(v)
        rows.append([k, int(step), f"{float(v):.8g}", f"{cum / total:.6f}"])
    rows.append([len(result.timesteps), "prior", f"{prior:.8g}", "1.000000"])
    return write_csv(path, ["k", "timestep", "term_bpd", "cumulative_share"], rows)
