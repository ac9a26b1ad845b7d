"""`iddpm classify`: a class-conditional model's bound as a classifier (eval/classify.py)
of a data set's images, with the same data and estimator options as `iddpm nll`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iddpm._io import write_json
from iddpm.build import load_model
from iddpm.config import EvalConfig
from iddpm.eval.classify import ClassifyResult, class_bounds
from iddpm.workflows import runtime
from iddpm.workflows.context import JobContext, StatsConfig
from iddpm.workflows.data import data_for_model
from iddpm.workflows.nll import tag
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.runs import check_writable_dir, run_of
from iddpm.workflows.sample import num_steps
from iddpm.workflows.statistics import reverse_variance


@dataclass(frozen=True)
class ClassifyJob:
    """Classify `eval.data` (empty: the model's training data) with the bound of
    `checkpoint`; the summary goes to `out_dir` (default RUN/eval)."""

    checkpoint: Path
    eval: EvalConfig
    out_dir: Path | None = None
    stats: StatsConfig = field(default_factory=StatsConfig)


def estimator(cfg: EvalConfig, num_timesteps: int) -> str:
    """How the bound was computed, in words for reports."""
    steps = cfg.steps or str(num_timesteps)
    if cfg.mc_timesteps:
        return f"Monte-Carlo, {cfg.mc_timesteps} {cfg.mc_method} steps of {steps}"
    return f"exact over {steps} steps"


def classify_to_files(
    job: ClassifyJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """Bound on log p(x | y) for every class y of each image (common random numbers), the
    predictions and their accuracy; the summary is also OUT_DIR/classify_<tag>.json."""
    cfg = job.eval
    loaded = load_model(job.checkpoint, use_ema=cfg.use_ema, device=device)
    mcfg = loaded.config.model
    if mcfg.num_classes is None:
        raise ValueError(
            f"{job.checkpoint} is an unconditional model; classify needs a class-conditional "
            "one (trained with --class-cond, e.g. --preset digits-cond)"
        )
    T = loaded.config.diffusion.num_timesteps
    num_steps(loaded, cfg.steps)  # the step spec, before loading any data
    out_dir = job.out_dir or run_of(loaded.checkpoint).eval
    check_writable_dir(out_dir, "--out-dir")
    ds = data_for_model(loaded.config, cfg.data or None, cfg.split, cfg.num_images)
    ctx = JobContext(device, progress, stats=job.stats)
    table = reverse_variance(loaded, cfg.steps, cfg.sigma, ctx)
    start = time.perf_counter()
    with progress("classify", mcfg.num_classes * len(ds), "img") as bar:
        bpd = class_bounds(loaded, ds.images, cfg, device, bar.update, table)
    dims = mcfg.in_channels * mcfg.image_size**2
    result = ClassifyResult(bpd, ds.labels, dims)
    summary: dict[str, Any] = {
        **result.summary(),
        "estimator": estimator(cfg, T),
        "data": cfg.data or loaded.config.train.data,
        "split": cfg.split,
        "sigma": cfg.sigma,
        "seconds": round(time.perf_counter() - start, 3),
        "checkpoint": str(loaded.checkpoint),
    }
    if runtime.is_main():
        name = tag(cfg, T).replace("nll_", "classify_", 1)
        write_json(out_dir / f"{name}.json", summary)
    return summary
