"""Sampling jobs: load a model, check the sampler and step spec, draw, write .npz + grid.

`draw` is the shared block ("sample with sampler S at K steps") used by `sample_to_files`,
the sweep and the demo.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iddpm._io import write_json
from iddpm.build import LoadedModel, inference_model, kept_steps, load_model
from iddpm.config import SampleConfig
from iddpm.diffusion import registry
from iddpm.generate import Samples, sample_images, save_npz
from iddpm.workflows import runtime
from iddpm.workflows.plots import save_image_grid
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.runs import cache_folder, check_output_file, run_dir_of
from iddpm.workflows.statistics import StatsConfig, sampler_options

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


def compiled(loaded: LoadedModel, compile: bool) -> LoadedModel:
    """`loaded` with a torch.compile'd forward when `compile`; call it once the job's
    inputs are checked (torch.compile makes its cache folder as soon as it is called).
    The inductor cache lives in the run (RUN/cache/inductor), so a later job on the same
    model starts warm; a run this process cannot write to keeps inductor's default cache.
    Compiling pays for long jobs only: about a minute cold on a CPU, seconds warm (see
    benchmarks/bench_inference.py)."""
    if not compile:
        return loaded
    run = run_dir_of(loaded.checkpoint)
    cache = cache_folder(run, "inductor") if os.access(run, os.W_OK) else None
    return dataclasses.replace(loaded, model=inference_model(loaded.model, True, cache))


def sampler_names() -> tuple[str, ...]:
    """The registered samplers (what `--sampler` accepts)."""
    return registry.names()


def sampler_cli_options() -> dict[str, tuple[type, str, tuple[str, ...]]]:
    """Every sampler option with its type, help and the samplers that take it."""
    return registry.cli_options()


def num_steps(loaded: LoadedModel, spec: str) -> int:
    """The number of steps K (= network calls) of step spec `spec`; checks the spec."""
    return len(kept_steps(loaded.config.diffusion, spec))


def check_sampling(loaded: LoadedModel, cfg: SampleConfig) -> int:
    """Everything about a sampling request that can fail, before any work: the step spec,
    the sampler and its options. Returns K."""
    k = num_steps(loaded, cfg.steps)
    registry.make_options(cfg.sampler, cfg.sampler_options)
    return k


def tag(cfg: SampleConfig, num_timesteps: int) -> str:
    """A file-name tag: sampler, its options, the step spec."""
    opts = "".join(
        f"-{k}{v:g}" if isinstance(v, float) else f"-{k}{v}"
        for k, v in sorted(cfg.sampler_options.items())
    )
    spec = (cfg.steps or str(num_timesteps)).replace(",", "-").replace(":", "")
    return f"{cfg.sampler}{opts}_{spec}"


def draw(
    loaded: LoadedModel,
    cfg: SampleConfig,
    device: torch.device | str,
    progress: Progress = silent,
    desc: str | None = None,
    stats: StatsConfig | None = None,
    compile: bool = False,
) -> tuple[Samples, float]:
    """Samples of `cfg` from a loaded model (all ranks get the gathered set) and the
    seconds it took (statistics a sampler estimates from data are not counted).
    `compile`: a torch.compile'd forward for the sampling, made once the request and the
    sampler's statistics (estimated eagerly: another batch shape) are in hand."""
    k = check_sampling(loaded, cfg)
    options = sampler_options(loaded, cfg, device, stats, progress)
    loaded = compiled(loaded, compile)
    start = time.perf_counter()
    with progress(desc or f"sampling ({cfg.sampler}, {k} steps)", cfg.num, "img") as bar:
        samples = sample_images(
            loaded.model, loaded.config, cfg, device, progress=bar.update, options=options
        )
    return samples, time.perf_counter() - start


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
    loaded = load_model(job.checkpoint, use_ema=cfg.use_ema, device=device)
    k = check_sampling(loaded, cfg)
    name = f"{tag(cfg, loaded.config.diffusion.num_timesteps)}_n{cfg.num}_seed{cfg.seed}"
    out = job.out or run_dir_of(loaded.checkpoint) / "samples" / f"{name}.npz"
    grid = job.grid or out.with_suffix(".png")
    for path, flag in ((out, "--out"), (grid, "--grid"), (out.with_suffix(".json"), "--out")):
        check_output_file(path, flag)
    samples, seconds = draw(loaded, cfg, device, progress, stats=job.stats, compile=job.compile)
    result: dict[str, Any] = {
        "num": cfg.num,
        "steps": k,
        "spec": cfg.steps or str(loaded.config.diffusion.num_timesteps),
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
