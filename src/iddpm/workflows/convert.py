"""Turning a checkpoint of openai/improved-diffusion into an iddpm run directory."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iddpm.checkpoint import list_checkpoints, save_checkpoint
from iddpm.checkpoint import run_dir as make_run_dir
from iddpm.config import DiffusionConfig, ExperimentConfig, TrainConfig
from iddpm.model.convert import load_reference_checkpoint
from iddpm.workflows.runs import check_new_run

OVERWRITE_HINT = "pass --overwrite to replace it, or choose another folder"


@dataclass(frozen=True)
class ConvertJob:
    """The reference file, the settings it does not store, and the new run directory
    (`overwrite`: replace the run already there)."""

    reference: Path
    run_dir: Path
    image_size: int
    num_heads: int = 4
    diffusion_steps: int = 4000
    schedule: str = "cosine"
    rescale_timesteps: bool = True
    overwrite: bool = False


def convert(job: ConvertJob) -> dict[str, Any]:
    """Load the reference model into iddpm's UNet (architecture from the tensor shapes) and
    write it as RUN_DIR/checkpoints/…; a model with 2× the image channels at its output is
    taken to have learned-range variance (the paper's), else fixed-large.

    Everything is checked before the first write. With `overwrite`, the run already in
    RUN_DIR is replaced: its checkpoints and metrics go once the new checkpoint is saved.
    """
    check_new_run(job.run_dir, overwrite=job.overwrite, hint=OVERWRITE_HINT)
    try:
        model_cfg, model = load_reference_checkpoint(
            job.reference, job.image_size, num_heads=job.num_heads
        )
    except ValueError as e:  # the library names its arguments; the user knows the flags
        raise ValueError(re.sub(r"\bnum_heads\b", "--num-heads", str(e))) from None
    learned = model_cfg.out_channels == 2 * model_cfg.in_channels
    cfg = ExperimentConfig(
        diffusion=DiffusionConfig(
            num_timesteps=job.diffusion_steps,
            schedule=job.schedule,
            var_type="learned-range" if learned else "fixed-large",
            rescale_timesteps=job.rescale_timesteps,
        ),
        model=model_cfg,
        train=TrainConfig(data="", class_cond=model_cfg.num_classes is not None),
    )
    run = make_run_dir(job.run_dir)
    old = [path for _, path in list_checkpoints(run.checkpoints)]
    # the checkpoint first: a failed save leaves a replaced run as it was
    path = save_checkpoint(run, {"model": model.state_dict(), "ema": {}}, cfg, step=0)
    run.create(cfg)
    for stale in [p for p in old if p != path] + [run.metrics_path]:
        stale.unlink(missing_ok=True)
    params = sum(p.numel() for p in model.parameters())
    return {"checkpoint": str(path), "parameters": params, "config": cfg.to_dict()}
