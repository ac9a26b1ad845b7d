"""Wiring for whole jobs: data -> trainer -> checkpoints, shared by the train, demo and
ablate commands. The one module besides the CLI that imports the data layer and the trainer
together (DESIGN.md §2: data yields batches, train consumes them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from iddpm import distributed
from iddpm.build import build_diffusion, build_timestep_sampler, build_unet, load_init_weights
from iddpm.config import ExperimentConfig, SampleConfig
from iddpm.data.images import ImageDataset
from iddpm.data.loader import ImageBatches
from iddpm.data.spec import load_dataset
from iddpm.generate import sample_images
from iddpm.plots import save_image_grid
from iddpm.train.rules import split_batch
from iddpm.train.trainer import Trainer


def load_training_data(cfg: ExperimentConfig) -> ImageDataset:
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
    model = build_unet(cfg.model)
    if cfg.train.init_from and not resume:  # fine-tuning: another run's weights, fresh optimizer
        load_init_weights(model, cfg.train.init_from, cfg.train.init_weights)
    trainer = Trainer(
        model,
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
