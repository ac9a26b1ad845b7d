"""Bound-optimal step schedules (Watson et al. 2021) for a trained model: the `iddpm steps` job.

One network call per base step and test image gives the cost of every jump t → s of the
K-step bound (`diffusion.step_schedule.bound_cost_matrix`); dynamic programming then finds
the K kept steps of least bound. The cost matrix is cached in the run directory per
(checkpoint, images, seed, variance, decoder steps), so asking for other K is instant.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iddpm._io import atomic_write, write_json
from iddpm._tensor import to_model_range
from iddpm.build import LoadedModel, kept_steps, load_model, spaced
from iddpm.config import SampleConfig
from iddpm.diffusion.respace import format_steps
from iddpm.diffusion.step_schedule import BoundCosts, bound_cost_matrix, optimal_steps, path_cost
from iddpm.workflows import runtime
from iddpm.workflows.data import data_for_model
from iddpm.workflows.progress import Progress, running_total, silent
from iddpm.workflows.runs import check_writable_dir, run_dir_of
from iddpm.workflows.statistics import (
    MIN_IMAGES,
    StatsConfig,
    cache_path,
    checkpoint_digest,
    sampler_options,
)

STEP_SIGMAS = ("model", "analytic")


@dataclass(frozen=True)
class StepsJob:
    """The least-bound K-step schedules of `checkpoint` for every K in `nfe`, from the
    costs on `num_images` images of `data` ("" = the model's data) split `split`. The
    default is the training split: a schedule chosen on the test images would make the
    bound it is then measured with on those images optimistic.

    sigma: the reverse variance of each jump, the model's own or Analytic-DPM's (Γ from
    `stats`); decoder_steps: the decoder may sit at base steps below this (1 forces the
    last kept step to be 0; more lets the schedule stop earlier, at a cost of
    decoder_steps·T·d likelihood evaluations per image)."""

    checkpoint: Path
    nfe: tuple[int, ...] = (25,)
    data: str = ""
    split: str = "train"
    num_images: int = 256
    sigma: str = "model"
    decoder_steps: int = 8
    seed: int = 0
    batch_size: int = 64
    timestep_batch: int = 16
    stats: StatsConfig = field(default_factory=StatsConfig)
    out_dir: Path | None = None


def _check(job: StepsJob, num_t: int) -> None:
    if job.sigma not in STEP_SIGMAS:
        raise ValueError(f"unknown --sigma {job.sigma!r}; choose one of: {', '.join(STEP_SIGMAS)}")
    bad = [k for k in job.nfe if not 1 <= k <= num_t]
    if not job.nfe or bad:
        raise ValueError(f"--nfe {bad or 'nothing'}: each must be in [1, {num_t}] (the model's T)")
    if job.num_images < MIN_IMAGES // 4:
        raise ValueError(
            f"--num-images {job.num_images} is too few for a cost matrix; use at least "
            f"{MIN_IMAGES // 4} (default 256)"
        )
    if not 1 <= job.decoder_steps <= num_t:
        raise ValueError(f"--decoder-steps must be in [1, {num_t}], got {job.decoder_steps}")


def _meta(job: StepsJob, loaded: LoadedModel) -> dict[str, Any]:
    return {
        "checkpoint_sha256": checkpoint_digest(loaded.checkpoint),
        "data": job.data or loaded.config.train.data,
        "split": job.split,
        "num_images": job.num_images,
        "seed": job.seed,
        "sigma": job.sigma,
        "decoder_steps": job.decoder_steps,
        "stats": [job.stats.data, job.stats.num_images, job.stats.seed]
        if job.sigma != "model"
        else None,
    }


def _cached_costs(path: Path, meta: dict[str, Any]) -> BoundCosts | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)
        stored = json.loads(state["meta"])
        costs = BoundCosts(state["kl"], state["decoder"], state["prior"], int(state["num_images"]))
    except Exception:  # any damage: say which file
        raise ValueError(f"cached step costs {path} are unreadable; delete the file") from None
    if stored != meta:
        raise ValueError(
            f"cached step costs {path} belong to another checkpoint or setting; delete the "
            "file to compute them again"
        )
    return costs


def cost_matrix(
    job: StepsJob, loaded: LoadedModel, device: torch.device | str, progress: Progress = silent
) -> BoundCosts:
    """The costs of every jump of the model's base process (cached in the run)."""
    meta = _meta(job, loaded)
    path = cache_path(loaded, "step_costs", meta, ".pt")
    costs = _cached_costs(path, meta)
    if costs is not None:
        return costs
    diffusion, model_fn = spaced(loaded.model, loaded.config.diffusion, "")
    eps_moments = None
    if job.sigma == "analytic":
        cfg = SampleConfig(steps="", sampler="analytic")
        eps_moments = sampler_options(loaded, cfg, device, job.stats, progress).eps_moments
    ds = data_for_model(loaded.config, job.data or None, job.split, job.num_images)
    kwargs = {} if ds.labels is None else {"y": torch.as_tensor(ds.labels, device=device)}
    with progress(f"step costs on {len(ds)} images", len(ds), "img") as bar:
        costs = bound_cost_matrix(
            model_fn,
            diffusion,
            to_model_range(ds.images).to(device),
            seed=job.seed,
            batch_size=job.batch_size,
            timestep_batch=job.timestep_batch,
            eps_moments=eps_moments,
            decoder_steps=job.decoder_steps,
            model_kwargs=kwargs,
            progress=running_total(bar),  # it reports images done so far
        )
    if runtime.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"meta": json.dumps(meta), "kl": costs.kl, "decoder": costs.decoder,
                 "prior": costs.prior, "num_images": costs.num_images}  # fmt: skip
        with contextlib.suppress(OSError):  # a read-only run is used without a cache
            atomic_write(path, lambda f: torch.save(state, f))
    return costs


def schedules(
    job: StepsJob, loaded: LoadedModel, device: torch.device | str, progress: Progress = silent
) -> list[dict[str, Any]]:
    """For each K: the least-bound spec and its bound, beside the even spacing's bound."""
    _check(job, loaded.config.diffusion.num_timesteps)
    costs = cost_matrix(job, loaded, device, progress)
    rows = []
    for k in job.nfe:
        steps, bound = optimal_steps(costs, k)
        even = kept_steps(loaded.config.diffusion, str(k))
        rows.append(
            {
                "nfe": k,
                "spec": format_steps(steps),
                "bound_bpd": bound,
                "even_bound_bpd": path_cost(costs, even),
                "num_images": int(costs.num_images),
            }
        )
    return rows


def optimal_schedules(
    job: StepsJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """The `iddpm steps` job; the summary is also written as OUT_DIR/steps_<sigma>.json."""
    loaded = load_model(job.checkpoint, device=device)
    out_dir = job.out_dir or run_dir_of(loaded.checkpoint) / "eval"
    check_writable_dir(out_dir, "--out-dir")
    start = time.perf_counter()
    rows = schedules(job, loaded, device, progress)
    result = {
        "schedules": rows,
        "sigma": job.sigma,
        "num_images": rows[0]["num_images"],  # what the split holds, at most job.num_images
        "split": job.split,
        "seconds": round(time.perf_counter() - start, 3),
        "checkpoint": str(loaded.checkpoint),
    }
    if runtime.is_main():
        write_json(out_dir / f"steps_{job.sigma}.json", result)
    return result
