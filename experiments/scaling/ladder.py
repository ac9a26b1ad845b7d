"""The width ladder: the digits preset at several base widths, FLOPs per training step
counted with PyTorch's FLOP counter, and the steps each width gets from one budget."""

from __future__ import annotations

import iddpm.cli._startup  # noqa: F401  (OpenMP wait policy, allocator: before torch loads)

# isort: split
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from iddpm.build import build_diffusion, build_timestep_sampler, build_unet
from iddpm.config import ExperimentConfig
from iddpm.data.loader import ImageBatches
from iddpm.presets import get_preset
from iddpm.train.trainer import Trainer

NUM_GROUPS = 8  # GroupNorm groups for every width (the narrowest has 8 channels a level)


def width_config(width: int, steps: int, seed: int = 0) -> ExperimentConfig:
    """The digits preset at base width `width` (GroupNorm in NUM_GROUPS groups), trained
    `steps` steps, with 4 evaluations of the held-out bound and 2 digits-FIDs."""
    cfg = get_preset("digits")
    every = max(1, steps // 4)
    train = cfg.train.replace(
        steps=steps,
        seed=seed,
        eval_every=every,
        eval_images=100,
        fid_every=2 * every,
        fid_samples=256,
        log_every=max(1, every // 4),
        sample_every=0,
        checkpoint_every=steps,
        precision="fp32",  # FLOPs are counted in fp32; the same arithmetic for every width
    )
    return cfg.replace(model=cfg.model.replace(model_channels=width, num_groups=NUM_GROUPS),
                       train=train)  # fmt: skip


def flops_per_step(cfg: ExperimentConfig) -> int:
    """FLOPs of one training step (forward and backward of the whole batch; optimizer and
    EMA not counted), by torch.utils.flop_counter on one real Trainer.step()."""
    m = cfg.model
    pixels = np.random.default_rng(0).integers(
        0, 256, (cfg.train.batch_size, m.image_size, m.image_size, m.in_channels), np.uint8
    )
    batches = ImageBatches(pixels, None, cfg.train.batch_size, seed=0)
    trainer = Trainer(
        build_unet(m),
        build_diffusion(cfg.diffusion),
        batches,
        build_timestep_sampler(cfg.diffusion),
        cfg,
        device="cpu",
    )
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.step()
    return int(counter.get_total_flops())


def num_parameters(cfg: ExperimentConfig) -> int:
    return sum(p.numel() for p in build_unet(cfg.model).parameters())


def steps_for_budget(budget_flops: float, per_step: int) -> int:
    return max(8, round(budget_flops / per_step))


__all__ = ["flops_per_step", "num_parameters", "steps_for_budget", "torch", "width_config"]
