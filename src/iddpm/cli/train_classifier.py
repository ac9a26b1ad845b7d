"""`iddpm train-classifier`: the noise-aware classifier of classifier guidance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from iddpm.cli._command import job_command
from iddpm.cli.options import apply_overrides, changed_fields, experiment_options, run_options
from iddpm.workflows.train_classifier import (
    DEFAULT_CLASSIFIER_STEPS,
    classifier_base,
    train_classifier,
)


@click.command("train-classifier")
@click.option(
    "--model",
    "model_run",
    type=click.Path(path_type=Path),
    default=None,
    help="the diffusion run (or checkpoint) the classifier is for: its process, image size, "
    "channels, architecture and classes",
)
@click.option("--preset", default=None, help="start from a preset instead of --model")
@run_options("runs/classifier", "the classifier's checkpoints and metrics")
@experiment_options
@job_command
def train_classifier_command(
    model_run: Path | None,
    preset: str | None,
    run_dir: Path,
    resume: bool,
    max_minutes: float | None,
    print_config: bool,
    device: Any,
    progress: Any,
    **values: Any,
) -> dict[str, Any]:
    """Train a noise-aware classifier p(y | x_t, t) for classifier guidance
    (`iddpm sample RUN --classifier CLASSIFIER_RUN --classifier-scale S`).

    It is the diffusion run's encoder half with a pooled head, trained by cross-entropy on
    noised training images at random t; checkpoints, --resume, Ctrl-C and bad input
    behave as in `iddpm train`. Default: {steps} steps.
    """
    steps = values.pop("train__steps", None)
    k = values.pop("model__num_classes", None)
    base = classifier_base(model_run, preset, run_dir, resume, k, steps)
    if resume and steps is not None:
        base = base.replace(train=base.train.replace(steps=steps))
    cfg = apply_overrides(base, values)
    if print_config:
        click.echo(json.dumps(cfg.to_dict(), indent=2))
        return {"config": cfg.to_dict(), "overrides": changed_fields(values)}
    return train_classifier(cfg, run_dir, resume, max_minutes, device, progress)


train_classifier_command.help = (train_classifier_command.help or "").replace(
    "{steps}", str(DEFAULT_CLASSIFIER_STEPS)
)
