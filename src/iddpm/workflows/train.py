"""The training job: data → trainer → checkpoints (docs/design.md §2: data yields batches, train
consumes them; this is the one module that wires the two together).

Order of work, so that a failure writes nothing (docs/design.md §4): the run directory's state
and permissions, the data, the model and trainer, the checkpoint to resume from are all
checked first; only then does the run write: the metrics log cut back to the checkpoint's
step (a fresh start drops the lines of a run killed before its first save), checkpoints
with config.json, train_result.json. A run that fails while training (a full disk at a
save, an abort) cuts the metrics back to its last checkpoint again, so the log never holds
steps that no checkpoint has.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from iddpm import distributed
from iddpm._io import truncate_jsonl, write_json
from iddpm.build import (
    LoadedModel,
    build_diffusion,
    build_timestep_sampler,
    build_unet,
    load_init_weights,
    use_inductor_cache,
)
from iddpm.checkpoint import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    checkpoint_config,
    list_checkpoints,
    load_checkpoint,
    run_dir,
)
from iddpm.config import ExperimentConfig, SampleConfig
from iddpm.data.loader import ImageBatches
from iddpm.presets import get_preset
from iddpm.train.rules import split_batch
from iddpm.train.trainer import Trainer
from iddpm.workflows.context import JobContext
from iddpm.workflows.data import data_for_model
from iddpm.workflows.monitor import build_evaluator, check_monitoring, make_loggers
from iddpm.workflows.plan import SamplingPlan
from iddpm.workflows.plots import image_grid, save_image_grid
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.runs import (
    check_new_run,
    check_run_writable,
    has_checkpoints,
)

RESULT_FILE = "train_result.json"
DEFAULT_PRESET = "digits"


@dataclass(frozen=True)
class TrainJob:
    """Train `config` in `run_dir`; `resume` continues the run's latest checkpoint;
    `max_minutes` stops (with a checkpoint) after that much training time."""

    config: ExperimentConfig
    run_dir: Path
    resume: bool = False
    max_minutes: float | None = None


def read_config_file(path: Path, what: str) -> ExperimentConfig:
    """An ExperimentConfig from a JSON file; one-line errors name the file and the fix."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{what} {path} does not exist; pass an existing config.json"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{what} {path} is not valid JSON ({e}); repair it or pass another"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} {path} does not hold a JSON object of config sections")
    try:
        return ExperimentConfig.from_dict(data)
    except (TypeError, AttributeError, ValueError) as e:
        raise ValueError(
            f"{what} {path} is not a valid iddpm config ({' '.join(str(e).split())}); fix it, "
            "or start from one that `iddpm train --print-config` writes"
        ) from None


def start_config(preset: str | None, config_file: Path | None) -> ExperimentConfig:
    """The config a new run starts from: --config, else the preset (default DEFAULT_PRESET)."""
    if config_file is not None:
        return read_config_file(config_file, "--config")
    return get_preset(preset or DEFAULT_PRESET)


def base_config(
    preset: str | None, config_file: Path | None, run_dir: Path, resume: bool
) -> ExperimentConfig:
    """What command-line flags override: the run's own config on --resume, else
    `start_config`. (On --resume a --preset/--config is only checked against the run's
    config, by the command: `iddpm train`'s `check_agrees`.)"""
    return run_config(run_dir) if resume else start_config(preset, config_file)


def run_config(run: Path) -> ExperimentConfig:
    """The config a resumed run continues: RUN/config.json, or the one its latest
    checkpoint carries when that file is missing or damaged (every checkpoint stores the
    config; the run rewrites config.json with its next checkpoint)."""
    check_resumable(run)
    try:
        return read_config_file(run / CONFIG_FILE, "the run's config")
    except (OSError, ValueError):
        return checkpoint_config(load_checkpoint(run))


def check_resumable(run: Path) -> None:
    """`run` holds a complete checkpoint to resume from; one line saying what to do if not."""
    if has_checkpoints(run):
        return
    if run.exists() and not run.is_dir():
        raise NotADirectoryError(f"--resume: --run-dir {run} is a file; pass the run's folder")
    if (run / CONFIG_FILE).is_file() or (run / CHECKPOINT_DIR).is_dir():
        raise FileNotFoundError(
            f"--resume: {run} has no complete checkpoint (training stopped before its first "
            "save); run without --resume to start afresh"
        )
    raise FileNotFoundError(
        f"--resume: {run} holds no iddpm run; train without --resume to start one"
    )


def grid_hook(cfg: ExperimentConfig, run: Path, device: torch.device, num: int = 64):
    """Every `sample_every` steps: a grid of samples from the slowest EMA, 50 strided steps."""
    steps = "50" if cfg.diffusion.num_timesteps >= 50 else ""
    scfg = SampleConfig(num=num, steps=steps, batch_size=num, seed=cfg.train.seed)

    def hook(trainer: Trainer) -> None:
        model = build_unet(cfg.model).to(device).eval()
        model.load_state_dict(trainer.inference_state_dict())
        loaded = LoadedModel(cfg, model, run_dir(run).checkpoint_path(trainer.step_count))
        samples, _ = SamplingPlan(loaded, scfg, JobContext(device)).draw_all()
        if distributed.is_main():
            path = run_dir(run).samples / f"grid_{trainer.step_count:08d}.png"
            save_image_grid(path, samples.images)
            for logger in trainer.loggers:
                logger.image("samples", image_grid(samples.images), trainer.step_count)

    return hook


def build_trainer(
    cfg: ExperimentConfig, run: Path, device: torch.device, resume: bool = False, **kwargs: Any
) -> tuple[Trainer, int]:
    """The trainer of `cfg` with this rank's batches of the training data (checked), and
    the number of training images. A new run with `init_from` starts from that run's (or
    checkpoint's) weights with a fresh optimizer; a resumed one from its own checkpoint."""
    ds = data_for_model(cfg, split="train", for_training=True)
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
    if cfg.train.init_from and not resume:  # fine-tuning: another run's weights
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
        evaluator=build_evaluator(cfg, run, device),
        **kwargs,
    )
    return trainer, len(ds)


def _check_job(job: TrainJob) -> None:
    run = job.run_dir
    if job.resume:
        check_resumable(run)
    else:
        if job.config.train.steps < 1:
            raise ValueError("--steps 0 trains nothing; give the number of steps to train")
        check_new_run(run)
    check_run_writable(run)
    check_monitoring(job.config)


def _cut_metrics(run: Path, step: int) -> None:
    """Drop the metric lines past `step` (steps to be trained again), in place."""
    truncate_jsonl(run / METRICS_FILE, lambda row: int(row.get("step", 0)) <= step)


def _last_saved_step(run: Path) -> int:
    found = list_checkpoints(run / CHECKPOINT_DIR)
    return found[-1][0] if found else 0


def _progress_callback(bar, max_seconds: float | None):
    start, last = time.perf_counter(), [0.0]

    def on_step(trainer: Trainer, record: dict[str, Any]) -> None:
        postfix = {"step": float(trainer.step_count)} if max_seconds else {}
        if "loss" in record:
            postfix["loss"] = record["loss"]
        if max_seconds:  # a time budget: the bar counts seconds, so it shows the time left
            now = min(time.perf_counter() - start, max_seconds)
            bar.update(now - last[0], **postfix)
            last[0] = now
        else:
            bar.update(1, **postfix)

    return on_step


def train(
    job: TrainJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """The `iddpm train` job; returns the trainer's summary (also RUN/train_result.json).

    "interrupted" is True when SIGINT/SIGTERM stopped it (with a checkpoint first) and
    "signal" names the signal.
    """
    cfg, run = job.config, job.run_dir
    _check_job(job)
    max_seconds = job.max_minutes * 60 if job.max_minutes else None
    trainer, num_images = build_trainer(cfg, run, torch.device(device), job.resume)
    if job.resume:
        trainer.resume(run)
    if cfg.train.compile:  # after every check; a resumed compiled run reuses its kernels
        use_inductor_cache(run_dir(run).cache("inductor"))
    if distributed.is_main():  # a fresh start drops the metrics of a run that never saved
        _cut_metrics(run, trainer.step_count)
        trainer.loggers = tuple(make_loggers(cfg, run, trainer.step_count if job.resume else None))
    bar_total = max_seconds if max_seconds else cfg.train.steps
    unit = "s" if max_seconds else "step"
    with progress("train", bar_total, unit) as bar:
        if not max_seconds:
            bar.update(trainer.step_count)
        trainer.on_step = _progress_callback(bar, max_seconds)
        try:
            summary = trainer.run(max_seconds=max_seconds)
        except BaseException:
            # a failed save (full disk, …) or an abort: the steps since the last checkpoint
            # are lost, so are their metric lines (the log matches the run's checkpoints)
            if distributed.is_main():
                _cut_metrics(run, _last_saved_step(run))
            raise
        finally:
            for logger in trainer.loggers:
                logger.close()
    summary = {**summary, "run_dir": str(run), "num_train_images": num_images}
    if distributed.is_main():
        write_json(run / RESULT_FILE, summary)
    return summary
