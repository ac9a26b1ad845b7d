"""Run directories and checkpoints (docs/design.md §5).

Layout of a run directory:

    RUN_DIR/config.json            the resolved ExperimentConfig
    RUN_DIR/checkpoints/step_%08d.pt
    RUN_DIR/checkpoints/latest     one line: the file name of the newest checkpoint
    RUN_DIR/metrics.jsonl          one JSON object per logged step
    RUN_DIR/samples/, RUN_DIR/plots/

A checkpoint is a dict `{format_version, config, step, model, ema, optimizer, sampler,
data, rng, ...}` holding only tensors and JSON-like values (dict, list, tuple, str, int,
float, bool, None), so `torch.load(path, weights_only=True)` reads it and loading never
runs pickled code. `ema` maps str(rate) to a {parameter name: float32 tensor} dict.

Writes are atomic: the bytes go to a temporary file in the same directory, are flushed and
fsynced, renamed over the final name with os.replace, and the directory is fsynced. The
`latest` pointer is replaced the same way afterwards, so a crash at any point leaves the
previous checkpoint and a `latest` that names a complete file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from iddpm._io import atomic_write, load_tensors, remove_stale_temporaries
from iddpm.config import ExperimentConfig

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
PLOTS_DIR = "plots"
EVAL_DIR = "eval"  # bits/dim, step schedules
SWEEP_DIR = "sweep"
LEADERBOARD_DIR = "leaderboard"  # the demo's sweep
CACHE_DIR = "cache"  # what jobs compute once per run and reuse (statistics, costs, kernels)
LATEST = "latest"
BEST = "best.pt"  # --keep-best: the checkpoint with the best held-out bound
_NAME = re.compile(r"^step_(\d+)\.pt$")
_EARLIER = "use an earlier checkpoint of the run (delete this one and the run falls back to it)"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run directory (nothing is created until `create`)."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def samples(self) -> Path:
        return self.root / SAMPLES_DIR

    @property
    def plots(self) -> Path:
        return self.root / PLOTS_DIR

    @property
    def eval(self) -> Path:
        return self.root / EVAL_DIR

    @property
    def sweep(self) -> Path:
        return self.root / SWEEP_DIR

    @property
    def leaderboard(self) -> Path:
        return self.root / LEADERBOARD_DIR

    def cache(self, what: str) -> Path:
        """RUN/cache/<what>: where jobs keep what they compute once for the run."""
        return self.root / CACHE_DIR / what

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}.pt"

    def create(self, cfg: ExperimentConfig | None = None) -> RunDir:
        """Make the folders and (when given) write config.json atomically."""
        for d in (self.root, self.checkpoints, self.samples, self.plots):
            d.mkdir(parents=True, exist_ok=True)
        if cfg is not None:
            text = json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n"
            atomic_write(self.config_path, lambda f: f.write(text.encode()))
        return self


def run_dir(path: str | os.PathLike[str]) -> RunDir:
    return RunDir(Path(path).expanduser())


def save_checkpoint(
    run: RunDir | str | os.PathLike[str],
    state: dict[str, Any],
    cfg: ExperimentConfig,
    step: int,
    keep: int = 3,
    name: str | None = None,
) -> Path:
    """Write `state` (plus format_version, config, step) as checkpoints/step_<step>.pt,
    point `latest` at it and delete all but the newest `keep` checkpoints. With `name`
    (e.g. BEST) it is written as checkpoints/<name> instead, outside that rotation.

    Raises TypeError (one line) when `state` holds anything but tensors and JSON-like
    values, before touching the disk. Returns the checkpoint path.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 checkpoints, got {keep}")
    run = run if isinstance(run, RunDir) else run_dir(run)
    payload = {**state, "format_version": FORMAT_VERSION, "config": cfg.to_dict(), "step": step}
    _check_plain(payload, "checkpoint")
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run.checkpoints)
    path = run.checkpoints / name if name else run.checkpoint_path(step)
    atomic_write(path, lambda f: torch.save(payload, f))
    if name:
        return path
    atomic_write(run.checkpoints / LATEST, lambda f: f.write(f"{path.name}\n".encode()))
    _apply_retention(run.checkpoints, keep, protect=path.name)
    return path


def resolve_checkpoint(path_or_run_dir: str | os.PathLike[str]) -> Path:
    """A checkpoint file, given a file, a run directory or its checkpoints/ folder.

    For a directory: the file `latest` names, or the highest step if `latest` is missing
    or stale.
    """
    p = Path(path_or_run_dir).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"no checkpoint or run directory at {p}; pass a .pt file or a run directory"
        )
    if p.is_file():
        return p
    folder = p / CHECKPOINT_DIR if (p / CHECKPOINT_DIR).is_dir() else p
    pointer = folder / LATEST
    if pointer.is_file():
        named = folder / pointer.read_text().strip()
        if named.is_file():
            return named
    found = list_checkpoints(folder)
    if not found:
        raise FileNotFoundError(
            f"run directory {p} has no checkpoints in {folder}; train first or pass a .pt file"
        )
    return found[-1][1]


def list_checkpoints(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, path) of every step_*.pt in `folder`, ascending by step."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = [(int(m.group(1)), e) for e in folder.iterdir() if (m := _NAME.match(e.name))]
    return sorted(out)


def load_checkpoint(
    path_or_run_dir: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only) and check its format version.

    One-line errors: FileNotFoundError for a missing path or a run with no checkpoints;
    ValueError for a damaged or foreign file (never unpickled beyond tensors) or an unknown
    format_version.
    """
    path = resolve_checkpoint(path_or_run_dir)
    state = load_tensors(path, "checkpoint", _EARLIER, map_location)
    if not isinstance(state, dict) or "format_version" not in state:
        raise ValueError(
            f"{path} is not an iddpm checkpoint (no format_version); pass one written by "
            "iddpm (a model of openai/improved-diffusion: convert it with `iddpm convert`)"
        )
    version = state["format_version"]
    if version != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format_version {version!r} but this iddpm reads "
            f"version {FORMAT_VERSION}; use the iddpm release that wrote it"
        )
    return state


def checkpoint_config(state: dict[str, Any]) -> ExperimentConfig:
    """The config stored in a loaded checkpoint; a one-line ValueError when it is unusable."""
    try:
        return ExperimentConfig.from_dict(state["config"])
    except (KeyError, TypeError, AttributeError):
        raise ValueError(f"the checkpoint's config is missing or malformed; {_EARLIER}") from None


def load_for_inference(
    path_or_run_dir: str | os.PathLike[str], use_ema: bool = True
) -> tuple[ExperimentConfig, dict[str, torch.Tensor]]:
    """(config, model state_dict) for sampling or evaluation, with no other flags needed.

    With `use_ema` and EMA weights present, the parameters come from the slowest EMA
    (the largest rate, e.g. 0.9999 — the paper's evaluation weights), cast to the raw
    model's dtypes; buffers always come from the raw model.
    """
    state = load_checkpoint(path_or_run_dir)
    cfg = checkpoint_config(state)
    if not isinstance(state.get("model"), dict):
        raise ValueError(
            f"checkpoint {resolve_checkpoint(path_or_run_dir)} has no model weights; "
            "use another checkpoint of the run"
        )
    weights = dict(state["model"])
    ema = slowest_ema(state, resolve_checkpoint(path_or_run_dir)) if use_ema else None
    if ema is not None:
        for name, value in ema[1].items():
            weights[name] = value.to(weights[name].dtype) if name in weights else value
    return cfg, weights


def slowest_ema(state: dict[str, Any], path: Path) -> tuple[str, dict[str, torch.Tensor]] | None:
    """(rate, parameters) of the slowest EMA in a loaded checkpoint (the largest rate, e.g.
    0.9999: the paper's evaluation weights), or None when it stores no EMA. An entry that
    is not {rate: {parameter name: tensor}} (a damaged or hand-edited file) is a one-line
    ValueError naming the file, instead of an error deep inside torch."""
    emas = state.get("ema")
    if emas is None or (isinstance(emas, dict) and not emas):
        return None
    if not isinstance(emas, dict):
        raise ValueError(
            f"checkpoint {path} is damaged: its EMA entry is a {type(emas).__name__}, not "
            f"{{rate: weights}}; {_EMA_FIX}"
        )
    for rate, weights in emas.items():
        if not _is_rate(rate) or not isinstance(weights, dict):
            raise ValueError(
                f"checkpoint {path} is damaged: its EMA entry {rate!r} holds a "
                f"{type(weights).__name__}, not a rate's weights; {_EMA_FIX}"
            )
        bad = next((k for k, v in weights.items() if not isinstance(v, torch.Tensor)), None)
        if bad is not None:
            raise ValueError(
                f"checkpoint {path} is damaged: EMA {rate} parameter {bad!r} is not a tensor; "
                f"{_EMA_FIX}"
            )
    slowest = max(emas, key=float)
    return str(slowest), emas[slowest]


_EMA_FIX = "use another checkpoint of the run, or its raw weights (--no-ema, --init-weights raw)"


def _is_rate(key: Any) -> bool:
    try:
        return 0.0 <= float(key) < 1.0
    except (TypeError, ValueError):
        return False


def _apply_retention(folder: Path, keep: int, protect: str) -> None:
    # Keep `keep` files in all: the protected one plus the highest other steps.
    others = [path for _, path in list_checkpoints(folder) if path.name != protect]
    for path in others[: max(0, len(others) - (keep - 1))]:
        path.unlink()


_PRIMITIVES = (str, int, float, bool, type(None))


def _check_plain(obj: Any, where: str) -> None:
    """Raise TypeError naming the first value weights_only loading could not read."""
    for key, value in _walk(obj, where):
        if not isinstance(value, (*_PRIMITIVES, torch.Tensor)):
            raise TypeError(
                f"{key} is a {type(value).__name__}, which a weights_only checkpoint cannot "
                "hold; store tensors, numbers, strings, lists or dicts"
            )


def _walk(obj: Any, where: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                yield f"{where} key {k!r}", k
            yield from _walk(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{where}[{i}]")
    else:
        yield where, obj
