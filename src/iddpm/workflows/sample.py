"""Sampling jobs: load a model, plan the request, draw, write .npz + grid.

The request is a `plan.SamplingPlan` (validated once, statistics and model function built
once); `write_samples` is the shared writer of the sweep and the demo.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iddpm import __version__, distributed
from iddpm._io import write_json
from iddpm.build import LoadedModel, kept_steps, load_model
from iddpm.config import SampleConfig
from iddpm.diffusion import registry
from iddpm.generate import Samples, save_npz
from iddpm.shards import ShardedJob
from iddpm.workflows import runtime
from iddpm.workflows.cache import checkpoint_digest
from iddpm.workflows.context import JobContext, StatsConfig
from iddpm.workflows.export import check_png_dir, write_pngs
from iddpm.workflows.image_sets import in_memory_set
from iddpm.workflows.plan import SamplingPlan
from iddpm.workflows.plots import save_image_grid
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.runs import (
    check_output_file,
    check_outputs_spare_inputs,
    remove_stale_temporaries_of,
    run_of,
)

GRID_IMAGES = 256


SHARD_SIZE = 1000


@dataclass(frozen=True)
class SampleJob:
    """Draw `sample.num` samples from `checkpoint` (a run directory or .pt file) into `out`
    (default RUN/samples/<tag>.npz) and a PNG grid `grid` (default: out with .png);
    `stats`: the images samplers such as `analytic` estimate their statistics from;
    `compile`: run a torch.compile'd forward (its cache in RUN/cache/inductor).
    The samples are drawn in shards of `shard_size` into a job folder (`job_dir`, kept;
    default OUT-stem.job beside OUT, removed once OUT is written), so a killed job resumes;
    `png_dir`: also write one PNG per sample there."""

    checkpoint: Path
    sample: SampleConfig
    out: Path | None = None
    grid: Path | None = None
    stats: StatsConfig = field(default_factory=StatsConfig)
    compile: bool = False
    shard_size: int = SHARD_SIZE
    job_dir: Path | None = None
    png_dir: Path | None = None


def sampler_names() -> tuple[str, ...]:
    """The registered samplers (what `--sampler` accepts)."""
    return registry.names()


def sampler_cli_options() -> dict[str, tuple[type, str, tuple[str, ...]]]:
    """Every sampler option with its type, help and the samplers that take it."""
    return registry.cli_options()


def num_steps(loaded: LoadedModel, spec: str) -> int:
    """The number of steps K of step spec `spec`; checks the spec."""
    return len(kept_steps(loaded.config.diffusion, spec))


def write_samples(samples: Samples, out: Path, grid: Path | None) -> dict[str, str]:
    """The .npz (uint8 NHWC under arr_0, labels under arr_1) and a PNG grid of the first
    GRID_IMAGES samples, written atomically on rank 0."""
    paths = {"out": str(out)}
    if runtime.is_main():
        save_npz(out, samples)
        if grid is not None:
            save_image_grid(grid, samples.images[:GRID_IMAGES])
            paths["grid"] = str(grid)
    return paths


def sample_job(plan: SamplingPlan, job: SampleJob, folder: Path, device_type: str) -> ShardedJob:
    """The job folder of a sampling request: its manifest holds everything sample i
    depends on besides (seed, i), so a resumed job can only continue the same request."""
    cfg = plan.request
    fields = {
        "checkpoint_sha256": checkpoint_digest(plan.loaded.checkpoint),
        "use_ema": cfg.use_ema,
        "sampler": cfg.sampler,
        "sampler_options": dict(cfg.sampler_options),
        "steps": plan.spec,
        "seed": cfg.seed,
        "class_label": cfg.class_label,
        "guidance_scale": cfg.guidance_scale,
        "classifier_sha256": (
            checkpoint_digest(plan.classifier.checkpoint) if plan.classifier else None
        ),
        "classifier_scale": cfg.classifier_scale if plan.classifier else None,
        "clip_denoised": cfg.clip_denoised,
        "batch_size": cfg.batch_size,
        "precision": "float32",
        "compile": job.compile,
        "device": device_type,
        "stats": dataclasses.asdict(job.stats) if plan.entry.statistics else None,
        "code_version": __version__,
    }
    return ShardedJob(folder, "sample", fields, cfg.num, job.shard_size)


def draw_shards(plan: SamplingPlan, shards: ShardedJob) -> float:
    """Draw this rank's pending shards (shard k on rank k mod W), each written as soon as
    it is complete; returns the seconds spent sampling."""
    shards.check()  # a folder of another request is refused before anything is written
    plan.prepare()  # the sampler's statistics, which can still reject the request
    shards.open(runtime.is_main())
    distributed.barrier()
    mine = shards.mine(distributed.rank(), distributed.world_size())
    desc = f"sampling ({plan.request.sampler}, {plan.num_steps} steps)"
    start = time.perf_counter()
    try:
        with plan.ctx.progress(desc, sum(len(shards.range(k)) for k in mine), "img") as bar:
            for k in mine:
                samples = plan.draw(shards.range(k), bar.update)
                arrays = {"images": samples.images}
                if samples.labels is not None:
                    arrays["labels"] = samples.labels
                shards.write(k, arrays)
    except Exception:
        shards.discard_if_unused()
        raise
    seconds = time.perf_counter() - start
    distributed.barrier()
    return seconds


def assemble(shards: ShardedJob) -> Samples:
    """Every shard's samples, in index order."""
    parts = shards.shards()
    labels = [p["labels"] for p in parts if "labels" in p]
    return Samples(
        np.concatenate([p["images"] for p in parts]),
        np.concatenate(labels) if len(labels) == len(parts) else None,
    )


def sample_to_files(
    job: SampleJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """The `iddpm sample` job: validate, draw (in resumable shards), write; returns the
    summary (also written as out.json)."""
    cfg = job.sample
    ctx = JobContext(device, progress, stats=job.stats, compile=job.compile)
    loaded = load_model(job.checkpoint, use_ema=cfg.use_ema, device=device)
    plan = SamplingPlan(loaded, cfg, ctx)  # validates the request
    name = f"{plan.tag()}_n{cfg.num}_seed{cfg.seed}"
    out = job.out or run_of(loaded.checkpoint).samples / f"{name}.npz"
    grid = job.grid or out.with_suffix(".png")
    outputs = {"--out": out, "--grid": grid, "--out ": out.with_suffix(".json")}
    for flag, path in outputs.items():
        check_output_file(path, flag.strip())
    check_outputs_spare_inputs(outputs, [loaded.checkpoint])
    if job.png_dir is not None:
        check_png_dir(job.png_dir, "--png-dir")
    folder = job.job_dir or out.with_name(f"{out.stem}.job")
    shards = sample_job(plan, job, folder, torch.device(device).type)
    seconds = draw_shards(plan, shards)
    result: dict[str, Any] = {
        "num": cfg.num,
        "steps": plan.num_steps,
        "spec": plan.spec,
        "sampler": cfg.sampler,
        "sampler_options": dict(cfg.sampler_options),
        "seed": cfg.seed,
        **plan.cost(),
        "out": str(out),
        "seconds": round(seconds, 3),
        "images_per_s": round(cfg.num / seconds, 3) if seconds > 0 else None,
        "checkpoint": str(loaded.checkpoint),
    }
    if runtime.is_main():
        for path in outputs.values():
            remove_stale_temporaries_of(path)
        samples = assemble(shards)
        result.update(write_samples(samples, out, grid))
        if job.png_dir is not None:
            write_pngs(in_memory_set(str(out), samples), job.png_dir)
            result["png_dir"] = str(job.png_dir)
        write_json(out.with_suffix(".json"), result)
        if job.job_dir is None:
            shards.remove()
        else:
            result["job_dir"] = str(folder)
    distributed.barrier()
    return result
