"""What a training run measures about itself, wired from its config: the periodic evaluator
(held-out and training bits/dim; FID of samples from the registry's samplers) and the
TensorBoard logger. Everything that can be wrong is checked by `check_monitoring` before
the run writes anything (docs/design.md §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from iddpm._tensor import to_model_range
from iddpm.build import LoadedModel, build_unet, kept_steps
from iddpm.config import ExperimentConfig, SampleConfig
from iddpm.diffusion import registry
from iddpm.train.evaluate import EvalSet, OverfittingWarning, PeriodicEvaluator
from iddpm.train.tensorboard import FOLDER as TENSORBOARD_FOLDER
from iddpm.train.tensorboard import TensorBoardLogger, check_available
from iddpm.workflows.context import JobContext
from iddpm.workflows.data import data_for_model
from iddpm.workflows.plan import SamplingPlan

__all__ = [
    "OverfittingWarning",
    "build_evaluator",
    "check_monitoring",
    "drop_unsupported_defaults",
    "make_loggers",
]


def has_held_out_split(spec: str) -> bool:
    """Whether the data SPEC has a test split of its own (digits, CIFAR-10, a folder with
    train/ and test/); a single file or folder is one split (data/spec.py)."""
    if spec == "digits" or spec.startswith("cifar10:"):
        return True
    root = Path(spec).expanduser()
    return root.is_dir() and (root / "train").is_dir() and (root / "test").is_dir()


def _held_out(cfg: ExperimentConfig) -> Any:
    tc = cfg.train
    if not tc.eval_data and not has_held_out_split(tc.data):
        raise ValueError(
            f"--eval-every needs held-out images, and data {tc.data!r} has no test split of "
            "its own; pass --eval-data SPEC (a folder or .npz of held-out images), or "
            "--eval-every 0"
        )
    return data_for_model(cfg, tc.eval_data or None, "test", tc.eval_images, for_training=True)


def _fid_features(cfg: ExperimentConfig) -> str:
    m = cfg.model
    return "digits" if (m.image_size, m.in_channels) == (8, 1) else "inception"


def drop_unsupported_defaults(cfg: ExperimentConfig, explicit: set[str]) -> ExperimentConfig:
    """The config with the monitoring a preset turned on, but this data or process cannot
    have, turned off: the held-out curves when the data has no test split (and no
    --eval-data), FID when --fid-steps does not fit the process or its features (Inception,
    an optional extra) are not installed. Fields in `explicit`
    (given on the command line) are left alone, so `check_monitoring` refuses them."""
    tc, changes = cfg.train, {}
    preset_eval = "eval_every" not in explicit and tc.eval_every and not tc.eval_data
    if preset_eval and not has_held_out_split(tc.data) and not tc.keep_best:
        changes["eval_every"] = 0
    if "fid_every" not in explicit and tc.fid_every and not _fid_possible(cfg):
        changes["fid_every"] = 0
    return cfg.replace(train=tc.replace(**changes)) if changes else cfg


def _fid_possible(cfg: ExperimentConfig) -> bool:
    """The FID step spec fits the process and the features FID needs are installed."""
    try:
        kept_steps(cfg.diffusion, cfg.train.fid_steps)
        if _fid_features(cfg) == "inception":
            from iddpm.eval.features import _import_torch_fidelity

            _import_torch_fidelity()
    except (ValueError, ImportError):
        return False
    return True


def check_monitoring(cfg: ExperimentConfig) -> None:
    """One-line errors, before the run writes anything: held-out data for --eval-every, a
    registered --fid-sampler with a valid --fid-steps (and the features FID needs), and
    tensorboardX for --log tensorboard."""
    tc = cfg.train
    if tc.eval_every:
        _held_out(cfg)
    if tc.fid_every:
        if tc.fid_sampler not in registry.names():
            raise ValueError(
                f"--fid-sampler {tc.fid_sampler!r} is not a registered sampler; choose one of: "
                f"{', '.join(registry.names())}"
            )
        if registry.get(tc.fid_sampler).statistics:
            raise ValueError(
                f"--fid-sampler {tc.fid_sampler} estimates statistics from a saved checkpoint, "
                "which training does not have at every FID; pick another sampler (ancestral, "
                "ddim, …) and score it afterwards with `iddpm sweep`"
            )
        registry.make_options(tc.fid_sampler, {})
        try:
            kept_steps(cfg.diffusion, tc.fid_steps)
        except ValueError as e:
            raise ValueError(f"--fid-steps: {e}") from None
        if _fid_features(cfg) == "inception":
            from iddpm.eval.features import _import_torch_fidelity

            _import_torch_fidelity()  # one line naming the extra when it is missing
    if tc.log == "tensorboard":
        check_available()


def _score_fn(cfg: ExperimentConfig, run: Path, device: torch.device):
    """score(weights, step) -> {fid, fid_precision, fid_recall, …} of tc.fid_samples samples
    of the sampler (same seeds at every call) against the training split's features."""
    from iddpm.workflows.quality import extractor_for, reference, sample_and_score

    tc = cfg.train
    scfg = SampleConfig(
        num=tc.fid_samples, steps=tc.fid_steps, sampler=tc.fid_sampler, seed=tc.seed
    )
    cache: dict[str, Any] = {}

    def score(weights: dict[str, torch.Tensor], step: int) -> dict[str, Any]:
        if not cache:  # built at the first FID: nothing to pay when it never comes
            cache["extractor"] = extractor_for(_fid_features(cfg), device)
            cache["ref"] = reference(tc.data, "train", cache["extractor"])
            cache["model"] = build_unet(cfg.model).to(device).eval()
        model = cache["model"]
        model.load_state_dict(weights)
        loaded = LoadedModel(cfg, model, run / "checkpoints" / f"step_{step:08d}.pt")
        plan = SamplingPlan(loaded, scfg, JobContext(device, use_cache=False))
        row = sample_and_score(plan, cache["extractor"], cache["ref"])
        out = {"fid": row["fid"], "fid_samples": row["num_samples"]}
        for key in ("precision", "recall", "confident_fraction"):
            if row.get(key) is not None:
                out[f"fid_{key}"] = row[key]
        out["fid_sampler"], out["fid_steps"] = tc.fid_sampler, tc.fid_steps
        return out

    return score


def build_evaluator(
    cfg: ExperimentConfig, run: Path, device: torch.device
) -> PeriodicEvaluator | None:
    """The run's evaluator (None when --eval-every and --fid-every are both 0): the first
    eval_images held-out images, as many training images, and the FID score function."""
    tc = cfg.train
    if not tc.eval_every and not tc.fid_every:
        return None
    sets: list[EvalSet] = []
    if tc.eval_every:
        held = _held_out(cfg)
        train = data_for_model(cfg, None, "train", len(held), for_training=True)
        for ds in (held, train):
            labels = None if ds.labels is None else torch.as_tensor(ds.labels)
            sets.append(EvalSet(to_model_range(ds.images), labels))
    else:
        empty = EvalSet(torch.zeros(0, cfg.model.in_channels, 1, 1))
        sets = [empty, empty]
    return PeriodicEvaluator(
        sets[0],
        sets[1],
        every=tc.eval_every,
        timesteps=tc.eval_timesteps,
        seed=tc.seed,
        patience=tc.overfit_patience,
        fid_every=tc.fid_every,
        score_fn=_score_fn(cfg, run, device) if tc.fid_every else None,
    )


def make_loggers(cfg: ExperimentConfig, run: Path, resumed_at: int | None) -> list[Any]:
    """[TensorBoardLogger] for --log tensorboard (events in RUN/tensorboard; a resumed run
    drops the events past its checkpoint), else []. Call after every check."""
    if cfg.train.log != "tensorboard":
        return []
    folder = run / TENSORBOARD_FOLDER
    return [TensorBoardLogger(folder, cfg.diffusion.num_timesteps, purge_step=resumed_at)]
