"""Factories from config to objects: the one place where config strings become enums and
concrete classes are wired together (DESIGN.md §2)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from iddpm.checkpoint import load_for_inference, resolve_checkpoint
from iddpm.config import DiffusionConfig, ExperimentConfig, UNetConfig
from iddpm.diffusion import schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.respace import ModelAdapter, spaced_model
from iddpm.diffusion.timestep_sampler import LossSecondMomentSampler, UniformSampler
from iddpm.model.unet import UNet


def build_diffusion(cfg: DiffusionConfig) -> GaussianDiffusion:
    """The full T-step process of `cfg` (float64 tables)."""
    return GaussianDiffusion(
        schedules.get(cfg.schedule, cfg.num_timesteps),
        mean_type=MeanType(cfg.mean_type),
        var_type=VarType(cfg.var_type),
    )


def build_unet(cfg: UNetConfig) -> UNet:
    return UNet(cfg)


def build_timestep_sampler(cfg: DiffusionConfig) -> UniformSampler | LossSecondMomentSampler:
    if cfg.timestep_sampler == "importance":
        return LossSecondMomentSampler(cfg.num_timesteps)
    return UniformSampler(cfg.num_timesteps)


def spaced(
    model: nn.Module, cfg: DiffusionConfig, steps: str | None = None
) -> tuple[GaussianDiffusion, ModelAdapter]:
    """The (possibly strided) process for `steps` and the model_fn that runs it.

    steps: a step spec ("250", "ddim50", "10,15,20"; None or "" = all T steps). The model
    sees the original step indices, rescaled as in training (PAPER.md P14).
    """
    return spaced_model(model, build_diffusion(cfg), steps or None, cfg.rescale_timesteps)


@dataclass
class LoadedModel:
    """A trained model ready for sampling or evaluation."""

    config: ExperimentConfig
    model: UNet
    checkpoint: Path


def load_model(
    path: str | Path, use_ema: bool = True, device: torch.device | str = "cpu"
) -> LoadedModel:
    """Rebuild the UNet of a run directory or checkpoint file, in eval mode, on `device`."""
    ckpt_path = resolve_checkpoint(path)
    cfg, state = load_for_inference(ckpt_path, use_ema=use_ema)
    model = build_unet(cfg.model)
    model.load_state_dict(state)
    model.to(device).eval()
    return LoadedModel(cfg, model, Path(ckpt_path))


def inference_model(
    model: nn.Module, compile: bool = False, cache_dir: str | Path | None = None
) -> nn.Module:
    """`model` in eval mode for sampling or bits/dim, compiled with torch.compile when
    `compile` (the same call signature; outputs equal to float32 rounding).

    Compilation happens on the first call of each input shape (static shapes: the last,
    smaller batch of a job compiles once more). `cache_dir` (a run's `cache/`) receives
    inductor's caches, so a second job on the same model reuses the compiled kernels;
    it is set process-wide (TORCHINDUCTOR_CACHE_DIR) and must be chosen before the first
    compiled call. Compiling pays only for long jobs: see benchmarks/bench_compile.py.
    """
    model.eval()
    if not compile:
        return model
    if cache_dir is not None:
        folder = Path(cache_dir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return torch.compile(model, dynamic=False)
