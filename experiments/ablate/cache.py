"""The on-disk layout of an ablation's output folder OUT, and its JSON files.

    OUT/ref_stats_digits_train.npz         digits-FID statistics of the train split
    OUT/invocations.jsonl                  one line per run of the plan: start, wall_s, computed
    OUT/units/NAME/run/                    the unit's training run (checkpoints, metrics.jsonl)
    OUT/units/NAME/train.json              the trainer's summary, once training finished
    OUT/units/NAME/eval_VARTYPE.json       bits/dim and digits-FID with that variance
    OUT/units/NAME/VARTYPE/samples_K*.png  sample grids at each K
    OUT/units/NAME/result.json             everything above, once the unit is finished

A rerun reads finished pieces back instead of redoing them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.ablate.plan import Unit

REFERENCE_STATS = "ref_stats_digits_train.npz"


@dataclass(frozen=True)
class UnitFiles:
    """The files of one unit under OUT/units/NAME."""

    folder: Path

    @classmethod
    def of(cls, out: Path, unit: Unit) -> UnitFiles:
        return cls(out / "units" / unit.name)

    @property
    def result(self) -> Path:
        return self.folder / "result.json"

    @property
    def train_summary(self) -> Path:
        return self.folder / "train.json"

    @property
    def run(self) -> Path:
        return self.folder / "run"

    @property
    def metrics(self) -> Path:
        return self.run / "metrics.jsonl"

    def evaluation(self, var_type: str) -> Path:
        return self.folder / f"eval_{var_type}.json"

    def grids(self, var_type: str) -> Path:
        return self.folder / var_type


def reference_stats_path(out: Path) -> Path:
    return out / REFERENCE_STATS


def write_json(path: Path, obj: Any) -> Path:
    """Write `obj` as indented JSON atomically (numpy arrays and scalars become lists and
    numbers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(obj, indent=1, default=_jsonable))
    partial.replace(path)
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def without_nan(value: Any) -> Any:
    """NaN/inf -> None throughout, so the file is strict JSON."""
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (one per logged training step)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Invocation:
    """One run of the plan: when it started (time.time() seconds), how long it took, and
    the units it computed (not read back from the cache)."""

    start: float
    wall_s: float
    computed: list[str]


def log_invocation(out: Path, invocation: Invocation) -> None:
    with (out / "invocations.jsonl").open("a") as file:
        record = {"start": invocation.start, "wall_s": invocation.wall_s}
        file.write(json.dumps({**record, "computed": invocation.computed}) + "\n")


def read_invocations(out: Path) -> list[Invocation]:
    path = out / "invocations.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [Invocation(**json.loads(line)) for line in lines]
