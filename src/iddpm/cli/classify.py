"""`iddpm classify`: the class-conditional bound as a classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from iddpm.cli._command import job_command
from iddpm.cli.options import bound_options, pop_stats_config, stats_options
from iddpm.config import EvalConfig
from iddpm.workflows.classify import ClassifyJob, classify_to_files


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@bound_options
@click.option("--ema/--no-ema", default=True, show_default=True, help="use EMA weights")
@click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="output folder")
@stats_options
@job_command
def classify(
    checkpoint: Path, out_dir: Path | None, ema: bool, device: Any, progress: Any, **fields: Any
) -> dict[str, Any]:
    """Classify images by the bound of a class-conditional CHECKPOINT: the bound on
    log p(x | y) for every class y with the same noise for every class, the predicted class
    argmax_y, accuracy, confusion matrix, per-class bits/dim and the label-marginal bound
    log p(x) >= log sum_y p(y) exp(ELBO_y). Costs K bounds per image (use --mc or --steps
    to make each cheap); last line is JSON with "accuracy"."""
    stats = pop_stats_config(fields)
    cfg = EvalConfig(use_ema=ema, **fields)
    return classify_to_files(ClassifyJob(checkpoint, cfg, out_dir, stats), device, progress)
