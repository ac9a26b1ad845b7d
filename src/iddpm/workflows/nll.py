"""Bits/dim of a data set under a model's bound: the `iddpm nll` job, and the block the demo
and the sweep share (`bits_per_dim_of`)."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iddpm import __version__, distributed
from iddpm._io import atomic_write, write_json
from iddpm.build import LoadedModel, load_model
from iddpm.config import EvalConfig
from iddpm.diffusion import registry
from iddpm.eval.nll import (
    NllResult,
    bound_of_range,
    bound_process,
    evaluate_nll,
    kept_timesteps,
    write_terms_csv,
)
from iddpm.shards import ShardedJob
from iddpm.workflows import runtime
from iddpm.workflows.cache import checkpoint_digest
from iddpm.workflows.context import JobContext, StatsConfig
from iddpm.workflows.data import data_for_model
from iddpm.workflows.plan import compiled
from iddpm.workflows.plots import plot_bound_terms
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.runs import check_writable_dir, remove_stale_temporaries_of, run_of
from iddpm.workflows.sample import num_steps
from iddpm.workflows.statistics import reverse_variance

SHARD_SIZE = 1000


@dataclass(frozen=True)
class NllJob:
    """Bits/dim of `eval.data` (empty: the model's training data) under `checkpoint`;
    outputs go to `out_dir` (default RUN/eval); `stats`: the training images that
    `--sigma analytic` estimates its statistics from; `compile`: a torch.compile'd forward.
    The images are measured in shards of `shard_size` under a job folder (`job_dir`, kept;
    default OUT_DIR/<tag>.job, removed once the results are written), so a killed job
    resumes."""

    checkpoint: Path
    eval: EvalConfig
    out_dir: Path | None = None
    stats: StatsConfig = field(default_factory=StatsConfig)
    compile: bool = False
    shard_size: int = SHARD_SIZE
    job_dir: Path | None = None


def bits_per_dim_of(
    loaded: LoadedModel, cfg: EvalConfig, ctx: JobContext, desc: str = "bits/dim"
) -> NllResult:
    """The bound (exact, or the Monte-Carlo estimate with cfg.mc_timesteps) of the first
    cfg.num_images images (0: all) of cfg.data's cfg.split, checked against the model,
    with the reverse variance cfg.sigma (its statistics from the run cache or ctx.stats);
    ctx.compile: a torch.compile'd forward, made once the inputs are checked."""
    num_steps(loaded, cfg.steps)  # the step spec, before loading any data
    ds = data_for_model(loaded.config, cfg.data or None, cfg.split, cfg.num_images)
    table = reverse_variance(loaded, cfg.steps, cfg.sigma, ctx)
    loaded = compiled(loaded, ctx.compile)
    with ctx.progress(desc, len(ds), "img") as bar:
        return evaluate_nll(
            loaded,
            ds.images,
            ds.labels,
            cfg,
            ctx.device,
            progress=bar.update,
            reverse_variance=table,
        )


def tag(cfg: EvalConfig, num_timesteps: int) -> str:
    """File-name tag of an evaluation: split, step spec, Monte-Carlo size."""
    spec = (cfg.steps or str(num_timesteps)).replace(",", "-").replace(":", "")
    sigma = "" if cfg.sigma == "model" else f"_{cfg.sigma}"
    mc = f"_mc{cfg.mc_timesteps}" if cfg.mc_timesteps else ""
    return f"nll_{cfg.split}_{spec}{sigma}{mc}"


def images_digest(images: np.ndarray) -> str:
    """SHA-256 of an image array's bytes (read in blocks: a memory-mapped set stays on disk)."""
    h = hashlib.sha256()
    for lo in range(0, len(images), 4096):
        h.update(np.ascontiguousarray(images[lo : lo + 4096]).tobytes())
    return h.hexdigest()


def nll_job(loaded, job: NllJob, folder: Path, n: int, digest: str, device: str) -> ShardedJob:
    """The job folder of a bound request: everything image i's result depends on."""
    cfg = job.eval
    fields = {
        "checkpoint_sha256": checkpoint_digest(loaded.checkpoint),
        "use_ema": cfg.use_ema,
        "images_sha256": digest,
        "steps": cfg.steps or str(loaded.config.diffusion.num_timesteps),
        "sigma": cfg.sigma,
        "mc_timesteps": cfg.mc_timesteps,
        "mc_method": cfg.mc_method if cfg.mc_timesteps else None,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "timestep_batch": cfg.timestep_batch,
        "stats": dataclasses.asdict(job.stats) if registry.SIGMAS[cfg.sigma].statistics else None,
        "precision": "float32",
        "compile": job.compile,
        "device": device,
        "code_version": __version__,
    }
    return ShardedJob(folder, "nll", fields, n, job.shard_size)


def measure_shards(loaded, process, ds, cfg: EvalConfig, shards: ShardedJob, ctx) -> None:
    """This rank's pending shards (shard k on rank k mod W), each written when complete."""
    shards.open(runtime.is_main())
    distributed.barrier()
    mine = shards.mine(distributed.rank(), distributed.world_size())
    try:
        with ctx.progress("bits/dim", sum(len(shards.range(k)) for k in mine), "img") as bar:
            for k in mine:
                part = bound_of_range(
                    loaded, process, ds.images, ds.labels, cfg, shards.range(k), ctx.device,
                    bar.update,
                )  # fmt: skip
                shards.write(k, {name: t.numpy() for name, t in part.items()})
    except Exception:
        shards.discard_if_unused()
        raise
    distributed.barrier()


def assemble(shards: ShardedJob, process, cfg: EvalConfig) -> NllResult:
    """Per-image results in index order; per-term sums added in shard order."""
    parts = shards.shards()
    exact = cfg.mc_timesteps == 0
    terms = None
    if exact:
        terms = parts[0]["terms"].copy()
        for part in parts[1:]:
            terms += part["terms"]
        terms /= shards.total
    return NllResult(
        total_bpd=np.concatenate([p["total"] for p in parts]),
        prior_bpd=np.concatenate([p["prior"] for p in parts]),
        terms_bpd=terms,
        timesteps=kept_timesteps(process),
        exact=exact,
    )


def nll_to_files(
    job: NllJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """The `iddpm nll` job: bits/dim with the per-term CSV and plot (exact bound only) and
    the per-image bits/dim (OUT_DIR/<tag>_per_image.npz, what `iddpm compare` pairs); the
    summary is also written as OUT_DIR/<tag>.json."""
    cfg = job.eval
    loaded = load_model(job.checkpoint, use_ema=cfg.use_ema, device=device)
    T = loaded.config.diffusion.num_timesteps
    out_dir = job.out_dir or run_of(loaded.checkpoint).eval
    check_writable_dir(out_dir, "--out-dir")
    name = tag(cfg, T)
    start = time.perf_counter()
    ctx = JobContext(device, progress, stats=job.stats, compile=job.compile)
    num_steps(loaded, cfg.steps)  # the step spec, before loading any data
    ds = data_for_model(loaded.config, cfg.data or None, cfg.split, cfg.num_images)
    digest = images_digest(ds.images)
    folder = job.job_dir or out_dir / f"{name}.job"
    shards = nll_job(loaded, job, folder, len(ds), digest, torch.device(device).type)
    shards.check()  # a folder of another request is refused before anything is written
    table = reverse_variance(loaded, cfg.steps, cfg.sigma, ctx)
    process = bound_process(compiled(loaded, ctx.compile), cfg, table)
    measure_shards(loaded, process, ds, cfg, shards, ctx)
    result = assemble(shards, process, cfg)
    summary: dict[str, Any] = {
        **result.summary(),
        "data": cfg.data or loaded.config.train.data,
        "split": cfg.split,
        "steps": cfg.steps or str(T),
        "sigma": cfg.sigma,
        "seconds": round(time.perf_counter() - start, 3),
        "checkpoint": str(loaded.checkpoint),
    }
    distributed.barrier()  # every rank has read the shards
    if runtime.is_main():
        for suffix in ("_terms.csv", "_terms.png", "_per_image.npz", ".json"):
            remove_stale_temporaries_of(out_dir / f"{name}{suffix}")  # of a killed earlier run
        if result.exact:
            csv_path = write_terms_csv(out_dir / f"{name}_terms.csv", result)
            plot_path = plot_bound_terms(
                out_dir / f"{name}_terms.png", result.terms_bpd, float(result.prior_bpd.mean())
            )
            summary.update({"terms_csv": str(csv_path), "terms_plot": str(plot_path)})
        per_image = out_dir / f"{name}_per_image.npz"
        arrays = {"bpd": result.total_bpd, "prior_bpd": result.prior_bpd,
                  "seed": np.array(cfg.seed), "images_sha256": np.array(digest)}  # fmt: skip
        atomic_write(per_image, lambda f: np.savez(f, **arrays))
        summary["per_image"] = str(per_image)
        write_json(out_dir / f"{name}.json", summary)
        if job.job_dir is None:
            shards.remove()
        else:
            summary["job_dir"] = str(folder)
    return summary
