"""Every call the harness makes into the `iddpm` package, in one place.

Build a unit's config, train it, load it, evaluate it with another fixed variance, exact
bits/dim, sampling at K steps, digits-FID against reference statistics, and the plotting
and table helpers of the report. The rest of the harness imports `iddpm` only through
this module, so following a move of these functions means editing this file alone.
"""

from __future__ import annotations

import iddpm.cli._startup  # noqa: F401  (OpenMP wait policy, allocator: before torch loads)

# isort: split
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from experiments.ablate.plan import Unit, get_objective
from iddpm.build import LoadedModel, load_model
from iddpm.config import EvalConfig, ExperimentConfig, SampleConfig
from iddpm.data.bundled import load_digits
from iddpm.eval.fid import FeatureStats
from iddpm.eval.nll import evaluate_nll
from iddpm.presets import get_preset
from iddpm.workflows.context import JobContext
from iddpm.workflows.plan import SamplingPlan
from iddpm.workflows.plots import plot_metric_vs_steps, save_image_grid
from iddpm.workflows.quality import Reference, extractor_for, reference, score
from iddpm.workflows.report import markdown_table
from iddpm.workflows.runs import has_checkpoints
from iddpm.workflows.train import TrainJob, train

__all__ = [
    "FeatureStats",
    "LoadedModel",
    "bits_per_dim",
    "digits_fid_scorer",
    "load_trained",
    "markdown_table",
    "plot_metric_vs_steps",
    "reference_stats",
    "sample",
    "save_image_grid",
    "set_torch_threads",
    "test_images",
    "train_image_count",
    "train_unit",
    "unit_config",
    "with_var_type",
]


def unit_config(unit: Unit, train_steps: int) -> ExperimentConfig:
    """The digits preset with only the diffusion fields, seed and step count changed."""
    objective = get_objective(unit.objective)
    base = get_preset("digits")
    diffusion = base.diffusion.replace(
        num_timesteps=unit.timesteps,
        schedule=unit.schedule,
        loss=objective.loss,
        var_type=objective.train_var_type,
        timestep_sampler=objective.timestep_sampler,
    )
    train = base.train.replace(
        steps=train_steps,
        seed=unit.seed,
        log_every=1,  # one metrics row per step: the curve statistics need every step
        sample_every=0,
        checkpoint_every=max(1, train_steps // 3),
        keep_checkpoints=1,
        eval_every=0,  # the harness evaluates each unit itself, once, after training
        fid_every=0,
    )
    return base.replace(diffusion=diffusion, train=train)  # out_channels follows var_type


def train_unit(config: ExperimentConfig, run: Path, device: str) -> dict[str, Any]:
    """Train `config` into the run folder `run` (resuming from its last checkpoint if it
    has one) without a progress bar; returns the trainer's summary (`step`, `wall_s`, …)."""
    return train(TrainJob(config, run, resume=has_checkpoints(run)), torch.device(device))


def load_trained(run: Path, device: str) -> LoadedModel:
    """The EMA weights of the last checkpoint in the run folder `run`."""
    return load_model(run, device=device)


def with_var_type(loaded: LoadedModel, var_type: str) -> LoadedModel:
    """The same network evaluated with another fixed variance (P8); only L_simple models,
    whose output has no variance channels, can switch between fixed-large and fixed-small."""
    config = loaded.config
    if config.diffusion.var_type == var_type:
        return loaded
    if config.diffusion.learn_sigma or var_type not in ("fixed-large", "fixed-small"):
        raise ValueError(
            f"cannot evaluate a {config.diffusion.var_type!r} model as {var_type!r}; only "
            "fixed-large and fixed-small models are interchangeable"
        )
    new = config.replace(diffusion=config.diffusion.replace(var_type=var_type))
    return LoadedModel(new, loaded.model, loaded.checkpoint)


def test_images(count: int) -> np.ndarray:
    """The first `count` images of the digits test split, uint8 [N, 8, 8, 1]."""
    return load_digits("test").images[:count]


def train_image_count() -> int:
    return len(load_digits("train").images)


def bits_per_dim(
    loaded: LoadedModel,
    images: np.ndarray,
    batch_size: int,
    timestep_batch: int,
    seed: int,
    device: str,
) -> dict[str, Any]:
    """Exact bits/dim of uint8 `images` under the full T-step bound (P10, P12): the
    summary (`bpd`, `bpd_stderr`, …) plus `per_image_bpd`, float64 [N]."""
    config = EvalConfig(batch_size=batch_size, timestep_batch=timestep_batch, seed=seed)
    result = evaluate_nll(loaded, images, None, config, device)
    return {**result.summary(), "per_image_bpd": result.total_bpd}


def sample(loaded: LoadedModel, num: int, steps: int, seed: int, device: str) -> np.ndarray:
    """`num` ancestral samples with `steps` strided steps (P14; the full chain when
    steps == T), one batch; uint8 [num, H, W, C]. Sample i depends only on (seed, i)."""
    full = steps == loaded.config.diffusion.num_timesteps
    config = SampleConfig(num=num, steps="" if full else str(steps), batch_size=num, seed=seed)
    return SamplingPlan(loaded, config, JobContext(device)).draw_all()[0].images


def reference_stats(path: Path) -> FeatureStats:
    """digits-FID statistics of the digits train split, computed once and cached at `path`."""
    if path.is_file():
        return FeatureStats.load(path)
    stats = reference("digits", "train", extractor_for("digits", "cpu")).stats
    stats.save(path)  # atomic
    return stats


def digits_fid_scorer(stats: FeatureStats, device: str) -> Callable[[np.ndarray], float]:
    """A function from uint8 images [N, H, W, C] to their digits-FID against `stats`."""
    extractor = extractor_for("digits", device)
    ref = Reference(stats, "digits")

    def digits_fid(images: np.ndarray) -> float:
        return score(images, extractor, ref)["fid"]

    return digits_fid


def set_torch_threads(threads: int) -> int:
    """Use `threads` intra-op threads in this process; returns the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    return before
