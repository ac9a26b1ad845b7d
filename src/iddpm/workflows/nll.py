"""Bits/dim of a data set under a model's bound: the `iddpm nll` job, and the block the demo
and the sweep share (`bits_per_dim_of`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iddpm._io import write_json
from iddpm.build import LoadedModel, load_model
from iddpm.config import EvalConfig
from iddpm.eval.nll import NllResult, evaluate_nll, write_terms_csv
from iddpm.workflows import runtime
from iddpm.workflows.context import JobContext, StatsConfig
from iddpm.workflows.data import data_for_model
from iddpm.workflows.plan import compiled
from iddpm.workflows.plots import plot_bound_terms
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.runs import check_writable_dir, run_of
from iddpm.workflows.sample import num_steps
from iddpm.workflows.statistics import reverse_variance


@dataclass(frozen=True)
class NllJob:
    """Bits/dim of `eval.data` (empty: the model's training data) under `checkpoint`;
    outputs go to `out_dir` (default RUN/eval); `stats`: the training images that
    `--sigma analytic` estimates its statistics from; `compile`: a torch.compile'd forward."""

    checkpoint: Path
    eval: EvalConfig
    out_dir: Path | None = None
    stats: StatsConfig = field(default_factory=StatsConfig)
    compile: bool = False


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


def nll_to_files(
    job: NllJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """The `iddpm nll` job: bits/dim with the per-term CSV and plot (exact bound only);
    the summary is also written as OUT_DIR/<tag>.json."""
    cfg = job.eval
    loaded = load_model(job.checkpoint, use_ema=cfg.use_ema, device=device)
    T = loaded.config.diffusion.num_timesteps
    out_dir = job.out_dir or run_of(loaded.checkpoint).eval
    check_writable_dir(out_dir, "--out-dir")
    name = tag(cfg, T)
    start = time.perf_counter()
    ctx = JobContext(device, progress, stats=job.stats, compile=job.compile)
    result = bits_per_dim_of(loaded, cfg, ctx, f"bits/dim ({name})")
    summary: dict[str, Any] = {
        **result.summary(),
        "data": cfg.data or loaded.config.train.data,
        "split": cfg.split,
        "steps": cfg.steps or str(T),
        "sigma": cfg.sigma,
        "seconds": round(time.perf_counter() - start, 3),
        "checkpoint": str(loaded.checkpoint),
    }
    if runtime.is_main():
        if result.exact:
            csv_path = write_terms_csv(out_dir / f"{name}_terms.csv", result)
            plot_path = plot_bound_terms(
                out_dir / f"{name}_terms.png", result.terms_bpd, float(result.prior_bpd.mean())
            )
            summary.update({"terms_csv": str(csv_path), "terms_plot": str(plot_path)})
        write_json(out_dir / f"{name}.json", summary)
    return summary
