"""`iddpm train`: one code path from a laptop CPU to torchrun on many GPUs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from iddpm import distributed
from iddpm.cli._common import device_option, emit, pick_device
from iddpm.cli.options import apply_overrides, changed_fields, experiment_options
from iddpm.config import ExperimentConfig
from iddpm.pipeline import train_run
from iddpm.presets import PRESETS, get_preset


def resolve_config(
    preset: str, config_file: Path | None, run: Path, resume: bool, values: dict[str, Any]
) -> ExperimentConfig:
    """Preset (or --config file, or the run's own config on --resume), then the flags."""
    if resume and (run / "config.json").is_file():
        base = ExperimentConfig.from_dict(json.loads((run / "config.json").read_text()))
    elif config_file is not None:
        base = ExperimentConfig.from_dict(json.loads(Path(config_file).read_text()))
    else:
        base = get_preset(preset)
    return apply_overrides(base, values)


@click.command()
@click.option(
    "--preset",
    default="digits",
    show_default=True,
    help=f"starting recipe ({', '.join(PRESETS)}); every flag below overrides one field of it",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="start from a config.json instead of a preset",
)
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=Path("runs/train"),
    show_default=True,
    help="where checkpoints, metrics and samples go",
)
@click.option("--resume", is_flag=True, help="continue exactly from the run's latest checkpoint")
@click.option(
    "--max-minutes",
    type=float,
    default=None,
    help="stop (with a checkpoint) after this much training time",
)
@click.option("--print-config", is_flag=True, help="print the resolved config as JSON and exit")
@experiment_options
@device_option
def train(
    preset: str,
    config_file: Path | None,
    run_dir: Path,
    resume: bool,
    max_minutes: float | None,
    print_config: bool,
    device: str,
    **values: Any,
) -> None:
    """Train a model (one process, or under torchrun with one process per GPU).

    \b
    One GPU:        iddpm train --preset cifar10 --data cifar10:DIR --run-dir runs/c10
    One node:       torchrun --nproc_per_node 8 -m iddpm train --preset cifar10 ...
    Several nodes:  torchrun --nnodes 2 --node_rank R --nproc_per_node 8 \\
                      --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m iddpm train ...
    """
    cfg = resolve_config(preset, config_file, run_dir, resume, values)
    if print_config:
        click.echo(json.dumps(cfg.to_dict(), indent=2))
        emit({"config": cfg.to_dict(), "overrides": changed_fields(values)})
        return
    if resume and not (run_dir / "checkpoints").is_dir():
        raise FileNotFoundError(
            f"--resume: {run_dir} has no checkpoints; train without --resume first"
        )
    if (
        not resume
        and (run_dir / "checkpoints").is_dir()
        and any((run_dir / "checkpoints").iterdir())
    ):
        raise ValueError(
            f"{run_dir} already holds checkpoints; pass --resume to continue it or choose "
            "another --run-dir"
        )
    distributed.init()
    dev = pick_device(device)
    summary = train_run(cfg, run_dir, resume, dev, max_seconds=max_minutes and max_minutes * 60)
    emit(summary, run_dir / "train_result.json")
    distributed.shutdown()
