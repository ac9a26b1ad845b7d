"""Sampling jobs: load a model, plan the request, draw, write .npz + grid.

The request is a `plan.SamplingPlan` (validated once, statistics and model function built
once); `write_samples` is the shared writer of the sweep and the demo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iddpm._io import write_json
from iddpm.build import LoadedModel, kept_steps, load_model
from iddpm.config import SampleConfig
from iddpm.diffusion import registry
from iddpm.generate import Samples, save_npz
from iddpm.workflows import runtime
from iddpm.workflows.context import JobContext, StatsConfig
from iddpm.workflows.plan import SamplingPlan
from iddpm.workflows.plots import save_image_grid
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.runs import check_output_file, run_of

GRID_IMAGES = 256


@dataclass(frozen=True)
class SampleJob:
    """Draw `sample.num` samples from `checkpoint` (a run directory or .pt file) into `out`
    (default RUN/samples/<tag>.npz) and a PNG grid `grid` (default: out with .png);
    `stats`: the images samplers such as `analytic` estimate their statistics from;
    `compile`: run a torch.compile'd forward (its cache in RUN/cache/inductor)."""

    checkpoint: Path
    sample: SampleConfig
    out: Path | None = None
    grid: Path | None = None
    stats: StatsConfig = field(default_factory=StatsConfig)
    compile: bool = False


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


def sample_to_files(
    job: SampleJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """The `iddpm sample` job: validate, draw, write; returns the summary (also written as
    out.json)."""
    cfg = job.sample
    ctx = JobContext(device, progress, stats=job.stats, compile=job.compile)
    loaded = load_model(job.checkpoint, use_ema=cfg.use_ema, device=device)
    plan = SamplingPlan(loaded, cfg, ctx)  # validates the request
    name = f"{plan.tag()}_n{cfg.num}_seed{cfg.seed}"
    out = job.out or run_of(loaded.checkpoint).samples / f"{name}.npz"
    grid = job.grid or out.with_suffix(".png")
    for path, flag in ((out, "--out"), (grid, "--grid"), (out.with_suffix(".json"), "--out")):
        check_output_file(path, flag)
    samples, seconds = plan.draw_all()
    result: dict[str, Any] = {
        "num": cfg.num,
        "steps": plan.num_steps,
        "spec": plan.spec,
        "sampler": cfg.sampler,
        "sampler_options": dict(cfg.sampler_options),
        "seed": cfg.seed,
        **write_samples(samples, out, grid),
        "seconds": round(seconds, 3),
        "images_per_s": round(cfg.num / seconds, 3) if seconds > 0 else None,
        "checkpoint": str(loaded.checkpoint),
    }
    if runtime.is_main():
        write_json(out.with_suffix(".json"), result)
    return result
