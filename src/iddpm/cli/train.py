"""`iddpm train`: one code path from a laptop CPU to torchrun on many GPUs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import torch

from iddpm import distributed
from iddpm.build import build_diffusion, build_timestep_sampler, build_unet
from iddpm.cli._common import device_option, emit, pick_device
from iddpm.cli.options import apply_overrides, changed_fields, experiment_options
from iddpm.config import ExperimentConfig, SampleConfig
from iddpm.data.loader import ImageBatches
from iddpm.data.spec import load_dataset
from iddpm.generate import sample_images
from iddpm.plots import save_image_grid
from iddpm.presets import PRESETS, get_preset
from iddpm.train.trainer import Trainer, split_batch


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


def load_training_data(cfg: ExperimentConfig):
    """The training split of cfg.train.data, checked against the model's input."""
    m = cfg.model
    ds = load_dataset(
        cfg.train.data, "train", resolution=m.image_size, class_cond=cfg.train.class_cond
    )
    if ds.channels != m.in_channels:
        raise ValueError(
            f"data {cfg.train.data!r} has {ds.channels} channel(s) but the model takes "
            f"{m.in_channels}; pass --in-channels {ds.channels}"
        )
    if cfg.train.class_cond and m.num_classes != ds.num_classes:
        raise ValueError(
            f"data {cfg.train.data!r} has {ds.num_classes} classes but the model has "
            f"num_classes={m.num_classes}; pass --num-classes {ds.num_classes}"
        )
    return ds


def grid_hook(cfg: ExperimentConfig, run: Path, device: torch.device, num: int = 64):
    """Every `sample_every` steps: a grid of samples from the slowest EMA, 50 strided steps."""
    scfg = SampleConfig(num=num, steps="50", batch_size=num, seed=cfg.train.seed)

    def hook(trainer: Trainer) -> None:
        model = build_unet(cfg.model).to(device).eval()
        model.load_state_dict(trainer.inference_state_dict())
        samples = sample_images(model, cfg, scfg, device)
        if distributed.is_main():
            save_image_grid(run / "samples" / f"grid_{trainer.step_count:08d}.png", samples.images)

    return hook


def train_run(
    cfg: ExperimentConfig,
    run: Path,
    resume: bool,
    device: torch.device,
    max_seconds: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build everything from `cfg`, train, and return the trainer's summary."""
    ds = load_training_data(cfg)
    world = distributed.world_size()
    per_rank, _ = split_batch(cfg.train.batch_size, world, cfg.train.microbatch)
    batches = ImageBatches(
        ds.images,
        ds.labels,
        per_rank,
        seed=cfg.train.seed,
        rank=distributed.rank(),
        world_size=world,
        random_flip=cfg.train.random_flip,
    )
    torch.manual_seed(cfg.train.seed)  # initial weights are a function of the seed
    trainer = Trainer(
        build_unet(cfg.model),
        build_diffusion(cfg.diffusion),
        batches,
        build_timestep_sampler(cfg.diffusion),
        cfg,
        run_dir=run,
        hooks=[grid_hook(cfg, run, device)],
        device=device,
        progress=progress,
    )
    if resume:
        trainer.resume(run)
    summary = trainer.run(max_seconds=max_seconds)
    return {**summary, "run_dir": str(run), "num_train_images": len(ds.images)}


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
