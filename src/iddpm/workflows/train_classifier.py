"""The noise-aware classifier's training job (`iddpm train-classifier`): the classifier of
classifier guidance, p_φ(y | x_t, t), trained by cross-entropy on x_t ~ q(x_t | x0) at
uniformly drawn t (Dhariwal & Nichol 2021, §4).

It is a run like any other: the same trainer (with `diffusion.losses.classifier_losses`
as its loss), run directory, checkpoints, EMA, resume and bad-input contract as `iddpm
train` (workflows/train.py); only the config differs (`classifier_config`). The
classifier shares the diffusion process (T, schedule, timestep scaling), image size,
channels and architecture of the diffusion run it is made for, so that run's sampler can
use it, and its class count is the data's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from iddpm.build import load_model
from iddpm.config import ExperimentConfig
from iddpm.presets import get_preset
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.train import TrainJob, run_config, train

DEFAULT_CLASSIFIER_STEPS = 3000


def classifier_config(base: ExperimentConfig, num_classes: int | None = None) -> ExperimentConfig:
    """The classifier run of `base` (a diffusion model's config): the same process and
    encoder, a pooled head over `num_classes` (default: base's classes), labels from the
    data as targets (no class dropout), uniform t, no sample grids."""
    k = num_classes if num_classes is not None else base.model.num_classes
    if k is None:
        raise ValueError(
            "the model is unconditional, so the number of classes is unknown; pass "
            "--num-classes N (the number of classes in the data)"
        )
    model = base.model.replace(num_classes=k, null_class=False, classifier=True)
    train_cfg = base.train.replace(
        class_cond=True, class_dropout=0.0, sample_every=0, init_from="", random_flip=False
    )
    # cross-entropy is no bound term: importance-sampled t (P13) does not apply
    diffusion = base.diffusion.replace(timestep_sampler="uniform")
    return ExperimentConfig(diffusion=diffusion, model=model, train=train_cfg)


def classifier_base(
    model_run: Path | None,
    preset: str | None,
    run_dir: Path,
    resume: bool,
    num_classes: int | None,
    steps: int | None,
) -> ExperimentConfig:
    """What the command-line flags override: the run's own config on --resume; else the
    classifier config of the diffusion run --model (or of --preset)."""
    if resume:
        if model_run is not None or preset is not None:
            raise ValueError(
                "--resume continues the classifier run's own config; drop --model and --preset"
            )
        cfg = run_config(run_dir)
        if not cfg.model.classifier:
            raise ValueError(
                f"--resume: {run_dir} holds a diffusion run, not a classifier; resume it with "
                "`iddpm train --resume`"
            )
        return cfg
    if model_run is not None and preset is not None:
        raise ValueError("pass --model RUN or --preset NAME, not both")
    base = get_preset(preset or "digits") if model_run is None else load_model(model_run).config
    cfg = classifier_config(base, num_classes)
    if steps is None:
        steps = DEFAULT_CLASSIFIER_STEPS
    return cfg.replace(train=cfg.train.replace(steps=steps))


def train_classifier(
    cfg: ExperimentConfig,
    run_dir: Path,
    resume: bool = False,
    max_minutes: float | None = None,
    device: torch.device | str = "cpu",
    progress: Progress = silent,
) -> dict[str, Any]:
    """Train the classifier of `cfg` (a `classifier_config`) in `run_dir`: the training
    job itself, with its checks, resume and summary (RUN/train_result.json)."""
    if not cfg.model.classifier:
        raise ValueError("train-classifier needs a classifier config (see classifier_config)")
    return train(TrainJob(cfg, run_dir, resume, max_minutes), device, progress)
