"""results.json and results.csv beside the report: settings, per-unit metrics, per-arm
mean and seed spread, and the verdicts."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from experiments.ablate.cache import without_nan, write_json
from experiments.ablate.plan import Arm
from experiments.ablate.stats import ArmSummary, Measurement
from experiments.ablate.verdicts import Verdict

UNIT_COLUMNS = ["arm", "schedule", "T", "objective", "var_type", "seed", "bpd_stderr", "train_s"]


def write_results(
    folder: Path,
    measurements: list[Measurement],
    summary: dict[Arm, ArmSummary],
    claims: dict[str, Verdict],
    meta: dict[str, Any],
) -> tuple[Path, Path]:
    """results.json (`meta`, per-unit metrics, per-arm mean/std, verdicts; NaN as null) and
    results.csv (one row per trained unit and evaluated variance); returns both paths."""
    units = [_unit_row(m) for m in measurements]
    arms = [_arm_entry(arm, arm_summary) for arm, arm_summary in summary.items()]
    verdicts = {key: verdict.to_json() for key, verdict in claims.items()}
    doc = without_nan({**meta, "units": units, "arms": arms, "verdicts": verdicts})
    folder.mkdir(parents=True, exist_ok=True)
    json_path = write_json(folder / "results.json", doc)
    csv_path = folder / "results.csv"
    metrics = sorted({name for m in measurements for name in m.metrics})
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=UNIT_COLUMNS + metrics, restval="")
        writer.writeheader()
        writer.writerows(units)
    return json_path, csv_path


def _unit_row(measurement: Measurement) -> dict[str, Any]:
    arm = measurement.arm
    return {
        "arm": arm.label,
        "schedule": arm.schedule,
        "T": arm.timesteps,
        "objective": arm.objective,
        "var_type": arm.var_type,
        "seed": measurement.seed,
        "bpd_stderr": measurement.bpd_stderr,
        "train_s": measurement.train_s,
        **measurement.metrics,
    }


def _arm_entry(arm: Arm, summary: ArmSummary) -> dict[str, Any]:
    return {
        "arm": arm.label,
        "key": [arm.schedule, arm.timesteps, arm.objective, arm.var_type],
        "seeds": summary.seeds,
        "bpd_image_se": summary.bpd_image_se,
        **{m: {"mean": s.mean, "seed_sd": s.sd} for m, s in summary.stats.items()},
    }
