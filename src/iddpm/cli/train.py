"""`iddpm train`: one code path from a laptop CPU to torchrun on many GPUs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import click

from iddpm.cli._command import job_command
from iddpm.cli.options import (
    apply_overrides,
    changed_fields,
    experiment_options,
    flag_name,
    run_options,
)
from iddpm.config import ExperimentConfig, differences
from iddpm.presets import PRESETS
from iddpm.workflows.monitor import OverfittingWarning, drop_unsupported_defaults
from iddpm.workflows.train import DEFAULT_PRESET, TrainJob, base_config, start_config
from iddpm.workflows.train import train as train_job


@click.command()
@click.option(
    "--preset",
    default=None,
    help=f"starting recipe ({', '.join(PRESETS)}; default: {DEFAULT_PRESET}); every flag "
    "below overrides one field of it",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="start from a config.json instead of a preset",
)
@run_options("runs/train", "checkpoints, metrics and samples")
@experiment_options
@job_command
def train(
    preset: str | None,
    config_file: Path | None,
    run_dir: Path,
    resume: bool,
    max_minutes: float | None,
    print_config: bool,
    device: Any,
    progress: Any,
    **values: Any,
) -> dict[str, Any]:
    """Train a model (one process, or under torchrun with one process per GPU).

    Ctrl-C or SIGTERM saves a checkpoint, prints the JSON line ("interrupted": true) and
    exits 130 or 143, so `iddpm train … && iddpm sample …` stops there; rerun with
    `--resume` to continue exactly. Bad input: one line on stderr, exit 2.

    \b
    One GPU:        iddpm train --preset cifar10 --data cifar10:DIR --run-dir runs/c10
    One node:       torchrun --nproc_per_node 8 -m iddpm train --preset cifar10 ...
    Several nodes:  torchrun --nnodes 2 --node_rank R --nproc_per_node 8 \\
                      --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m iddpm train ...
    """
    if resume and values.get("train__init_from") is not None:
        raise ValueError(
            "--init-from starts a new run from other weights; a resumed run continues from "
            "its own checkpoint: drop --init-from, or train a new --run-dir"
        )
    cfg = apply_overrides(base_config(preset, config_file, run_dir, resume), values)
    explicit = set(changed_fields(values))
    if not resume:  # a preset's evaluation that this data cannot have is dropped, not refused
        cfg = drop_unsupported_defaults(cfg, explicit)
    if resume and (preset is not None or config_file is not None):
        given = apply_overrides(start_config(preset, config_file), values)
        given = drop_unsupported_defaults(given, explicit)  # as when the run started
        source = f"--preset {preset}" if config_file is None else f"--config {config_file}"
        check_agrees(given, cfg, source)
    if print_config:
        click.echo(json.dumps(cfg.to_dict(), indent=2))
        return {"config": cfg.to_dict(), "overrides": changed_fields(values)}
    with warnings.catch_warnings():
        warnings.simplefilter("always", OverfittingWarning)
        shown = warnings.showwarning

        def one_line(message: Any, category: type, *args: Any, **kwargs: Any) -> None:
            if issubclass(category, OverfittingWarning):  # one line, as every CLI message
                click.echo(f"iddpm: warning: {message}", err=True)
            else:
                shown(message, category, *args, **kwargs)

        warnings.showwarning = one_line
        return train_job(TrainJob(cfg, run_dir, resume, max_minutes), device, progress)


def check_agrees(given: ExperimentConfig, run: ExperimentConfig, source: str) -> None:
    """On --resume, a --preset/--config (with the flags) must resolve to the run's stored
    config (with the same flags): then rerunning the command that started a run, plus
    --resume, continues it. Otherwise one line lists every field that differs."""
    diff = differences(given, run)
    if not diff:
        return
    shown = "; ".join(
        f"--{flag_name(name)}: run {_show(theirs)}, {source} {_show(ours)}"
        for _, name, ours, theirs in diff
    )
    raise ValueError(
        f"--resume: {source} differs from the run's config ({shown}); pass the flags the run "
        f"was started with, or drop {source.split()[0]} to continue the run's own config"
    )


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)
