"""What samplers and bounds estimate from a model on data, cached in the run directory.

A statistic (`registry.STATISTICS`, e.g. Analytic-DPM's Γ_n = E‖ε_θ‖²/d per step) belongs
to a checkpoint, its weights (EMA or raw) and a step spacing; it is estimated once on M
training images with a seed and kept in the run cache (`cache.py`) as
RUN/cache/statistics/<checkpoint>-<key>.json. A cached table that is damaged (wrong
length, not numbers) is estimated again.

Samplers name the statistics they need at registration; a bound's reverse variance
(`--sigma`, `registry.SIGMAS`) does too. Nobody here knows which sampler needs what.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from iddpm._tensor import to_model_range
from iddpm.build import LoadedModel, spaced
from iddpm.diffusion import registry
from iddpm.diffusion.gaussian import GaussianDiffusion
from iddpm.workflows.cache import Damaged, checkpoint_digest
from iddpm.workflows.context import MIN_IMAGES, JobContext, StatsConfig
from iddpm.workflows.data import data_for_model

__all__ = ["MIN_IMAGES", "SIGMAS", "StatsConfig", "reverse_variance", "statistics_for"]

SIGMAS = tuple(registry.SIGMAS)


def _training_images(loaded: LoadedModel, stats: StatsConfig, device: torch.device | str):
    ds = data_for_model(loaded.config, stats.data or None, "train", stats.num_images)
    if len(ds) < MIN_IMAGES:
        raise ValueError(
            f"the training data has {len(ds)} images; statistics need at least {MIN_IMAGES}: "
            "pass more data with --stats-data"
        )
    kwargs = {} if ds.labels is None else {"y": torch.as_tensor(ds.labels, device=device)}
    return to_model_range(ds.images).to(device), kwargs


def _table_check(num_steps: int):
    def check(values: Any) -> torch.Tensor:
        ok = (
            isinstance(values, list)
            and len(values) == num_steps
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        )
        if not ok:
            raise Damaged(f"not a table of {num_steps} finite numbers")
        return torch.tensor(values, dtype=torch.float64)

    return check


def statistics_for(
    loaded: LoadedModel,
    names: Sequence[str],
    diffusion: GaussianDiffusion,
    model_fn: Any,
    ctx: JobContext,
) -> dict[str, torch.Tensor]:
    """name -> [K] float64 table of each statistic in `names` for the process `diffusion`
    run by `model_fn` (the respacing adapter of `loaded.model`: its `original_steps` names
    the kept steps), read from the run cache or estimated on `ctx.stats` images."""
    if not names:
        return {}
    stats = ctx.stats
    steps = [int(s) for s in model_fn.original_steps(torch.arange(diffusion.num_timesteps))]
    cache = ctx.cache(loaded.checkpoint)
    out = {}
    for name in names:
        statistic = registry.STATISTICS[name]
        meta = {
            "statistic": name,
            "checkpoint_sha256": checkpoint_digest(loaded.checkpoint),
            "ema": loaded.use_ema,
            "steps": steps,
            "num_images": stats.num_images,
            "data": stats.data or loaded.config.train.data,
            "seed": stats.seed,
        }

        def compute(statistic: registry.Statistic = statistic) -> list[float]:
            x0, kwargs = _training_images(loaded, stats, ctx.device)
            with ctx.progress(f"{statistic.name}: statistics of {len(x0)} images", None, "task"):
                table = statistic.estimate(
                    model_fn, diffusion, x0, seed=stats.seed, model_kwargs=kwargs
                )
            return [float(v) for v in table]

        out[name] = cache.json("statistics", meta, compute, _table_check(len(steps)))
    return out


def reverse_variance(
    loaded: LoadedModel, steps: str, sigma: str, ctx: JobContext
) -> torch.Tensor | None:
    """The [K] reverse-variance table of the K-step process for `--sigma` (one of
    `registry.SIGMAS`): None for the model's own; the statistics it needs come from the
    run cache (or are estimated, as for a sampler that needs them)."""
    if sigma not in registry.SIGMAS:
        raise ValueError(f"unknown --sigma {sigma!r}; choose one of: {', '.join(SIGMAS)}")
    entry = registry.SIGMAS[sigma]
    diffusion, model_fn = spaced(loaded.model, loaded.config.diffusion, steps)
    values = statistics_for(loaded, entry.statistics, diffusion, model_fn, ctx)
    return entry.table(diffusion, values)
