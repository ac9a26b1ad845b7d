"""Statistics of the ablation: curve smoothness, per-arm means over seeds, and paired
differences between arms with their uncertainty.

A *measurement* is one trained unit evaluated with one σ² choice: its arm, seed and
metrics (`bpd`, `fid_K`, `drop_K` = FID(K) − FID(full chain), curve statistics).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.ablate.cache import read_metrics
from experiments.ablate.plan import Arm

CURVE_KEYS = ("log_grad_norm_incr_std", "log_loss_incr_std", "log_grad_norm_ma_std")


def curve_stats(metrics_jsonl: Path, window: int) -> dict[str, float]:
    """Smoothness of the per-step training curve over the second half of training.

    For y = log(loss) and y = log(grad_norm) [one value per step]: `*_incr_std` is the std
    of the step-to-step increments y[i+1] − y[i]; `*_ma_std` the std of y around its
    centred moving average of `window` steps. Lower = smoother (less gradient noise).
    """
    rows = read_metrics(metrics_jsonl)
    out: dict[str, float] = {"num_steps": float(len(rows))}
    for key in ("loss", "grad_norm"):
        y = np.log(np.asarray([row[key] for row in rows if key in row], dtype=np.float64))
        y = y[len(y) // 2 :]
        if len(y) < 3:
            continue
        out[f"log_{key}_incr_std"] = float(np.diff(y).std(ddof=1))
        width = max(1, min(window, len(y) // 2 * 2 - 1))
        moving_average = np.convolve(y, np.ones(width) / width, mode="valid")
        residual = y[width // 2 : width // 2 + len(moving_average)] - moving_average
        out[f"log_{key}_ma_std"] = float(residual.std(ddof=1)) if len(residual) > 1 else math.nan
        out[f"final_{key}"] = float(np.exp(y[-min(len(y), 100) :].mean()))
    return out


@dataclass
class Measurement:
    """One unit evaluated with one σ² choice. per_image_bpd: float64 [N] on the common
    test images; bpd_stderr: its standard error of the mean; train_s: training seconds."""

    arm: Arm
    seed: int
    metrics: dict[str, float]
    bpd_stderr: float
    per_image_bpd: np.ndarray
    train_s: float = math.nan
    final_loss: float = math.nan


def collect(results: dict[str, dict[str, Any]]) -> list[Measurement]:
    """One measurement per (finished unit, evaluated variance) of `run_unit` results."""
    measurements = []
    for result in results.values():
        if "variants" not in result:
            continue
        unit = result["unit"]
        for var_type, evaluation in result["variants"].items():
            arm = Arm(unit["schedule"], unit["timesteps"], unit["objective"], var_type)
            measurements.append(
                Measurement(
                    arm=arm,
                    seed=unit["seed"],
                    metrics=_metrics(unit["timesteps"], evaluation, result["curve"]),
                    bpd_stderr=evaluation["bpd_stderr"],
                    per_image_bpd=np.asarray(evaluation["per_image_bpd"], dtype=np.float64),
                    train_s=result["train"].get("wall_s", math.nan),
                    final_loss=result["curve"].get("final_loss", math.nan),
                )
            )
    return measurements


def _metrics(timesteps: int, evaluation: dict[str, Any], curve: dict[str, float]):
    """bpd, fid_K, drop_K = fid_K − fid_T (when the full chain was sampled), curve keys."""
    fid = {int(k): float(value) for k, value in evaluation["fid"].items()}
    metrics: dict[str, float] = {"bpd": evaluation["bpd"]}
    metrics.update({f"fid_{k}": value for k, value in fid.items()})
    full = fid.get(timesteps)
    if full is not None:
        metrics.update({f"drop_{k}": value - full for k, value in fid.items() if k != timesteps})
    metrics.update({key: curve[key] for key in CURVE_KEYS if key in curve})
    return metrics


def by_arm(measurements: Iterable[Measurement]) -> dict[Arm, dict[int, Measurement]]:
    """Arm -> seed -> measurement."""
    arms: dict[Arm, dict[int, Measurement]] = {}
    for measurement in measurements:
        arms.setdefault(measurement.arm, {})[measurement.seed] = measurement
    return arms


@dataclass(frozen=True)
class SeedSpread:
    """A metric's mean over seeds and its standard deviation (NaN for one seed)."""

    mean: float
    sd: float


@dataclass
class ArmSummary:
    """An arm's seeds, each metric's spread over them, and its mean per-image s.e. of bpd."""

    seeds: list[int]
    stats: dict[str, SeedSpread]
    bpd_image_se: float

    def mean(self, metric: str) -> float:
        """The metric's mean over seeds, NaN when it was not measured."""
        spread = self.stats.get(metric)
        return spread.mean if spread is not None else math.nan


def summarize(measurements: list[Measurement]) -> dict[Arm, ArmSummary]:
    """Per arm, in report order: seeds, and for every metric its mean and std over seeds."""
    out = {}
    for arm, seeds in sorted(by_arm(measurements).items(), key=lambda item: item[0].sort_key()):
        names = set().union(*(m.metrics for m in seeds.values()))
        stats = {}
        for metric in sorted(names):
            values = np.asarray([m.metrics[metric] for m in seeds.values() if metric in m.metrics])
            sd = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            stats[metric] = SeedSpread(float(values.mean()), sd)
        image_se = float(np.mean([m.bpd_stderr for m in seeds.values()]))
        out[arm] = ArmSummary(sorted(seeds), stats, image_se)
    return out


def pooled_seed_sd(
    measurements: list[Measurement], metric: str, objectives: set[str] | None = None
) -> float:
    """Model-to-model std of `metric`, pooled over every arm with >= 2 seeds whose objective
    is in `objectives` (all arms when None); NaN if there is none."""
    sum_squares, dof = 0.0, 0
    for arm, seeds in by_arm(measurements).items():
        if objectives is not None and arm.objective not in objectives:
            continue
        values = [m.metrics[metric] for m in seeds.values() if metric in m.metrics]
        if len(values) > 1:
            sum_squares += float(np.var(values, ddof=1)) * (len(values) - 1)
            dof += len(values) - 1
    return math.sqrt(sum_squares / dof) if dof else math.nan


@dataclass(frozen=True)
class Comparison:
    """metric(a) − metric(b) averaged over `n` shared seeds, its uncertainty `u` and
    z = diff / u (all NaN with n = 0: not measured)."""

    diff: float
    u: float
    z: float
    n: int


NOT_MEASURED = Comparison(math.nan, math.nan, math.nan, 0)


def compare(measurements: list[Measurement], a: Arm, b: Arm, metric: str) -> Comparison:
    """metric(a) − metric(b) over the seeds both arms have, with its uncertainty u.

    u = sqrt(se_img² + 2 s²) / sqrt(n): s is the pooled seed-to-seed std of the metric
    (model-to-model spread, `pooled_seed_sd`) over the arms of the two objectives (over all
    arms if those have one seed each), n the shared seeds, and se_img (bpd only) the
    paired per-image standard error of the difference on the same test images.
    """
    arms = by_arm(measurements)
    seeds_a, seeds_b = arms.get(a, {}), arms.get(b, {})
    shared = [
        seed
        for seed in sorted(set(seeds_a) & set(seeds_b))
        if metric in seeds_a[seed].metrics and metric in seeds_b[seed].metrics
    ]
    if not shared:
        return NOT_MEASURED
    diffs = [seeds_a[s].metrics[metric] - seeds_b[s].metrics[metric] for s in shared]
    image_var = 0.0
    if metric == "bpd":
        paired = [seeds_a[s].per_image_bpd - seeds_b[s].per_image_bpd for s in shared]
        image_var = float(np.mean([p.var(ddof=1) / len(p) for p in paired]))
    seed_sd = pooled_seed_sd(measurements, metric, {a.objective, b.objective})
    if not math.isfinite(seed_sd):  # no repeated seeds of these objectives: borrow others'
        seed_sd = pooled_seed_sd(measurements, metric)
    n = len(shared)
    u = math.sqrt(image_var + 2 * seed_sd**2) / math.sqrt(n) if math.isfinite(seed_sd) else math.nan
    diff = float(np.mean(diffs))
    z = diff / u if u and math.isfinite(u) else math.nan
    return Comparison(diff, u, z, n)


def judge(comparison: Comparison, threshold: float = 2.0) -> str:
    """'reproduced' when the difference has the paper's sign (positive) by >= threshold·u,
    'not reproduced' when it has the opposite sign by as much, else 'inconclusive'."""
    z = comparison.z
    if not math.isfinite(z):
        return "inconclusive"
    if z >= threshold:
        return "reproduced"
    return "not reproduced" if z <= -threshold else "inconclusive"


def mean_metric(measurements: list[Measurement], arm: Arm, metric: str) -> float:
    """The metric's mean over the arm's seeds; +inf when it was not measured (so `min`
    never picks a missing arm)."""
    values = [m.metrics[metric] for m in measurements if m.arm == arm and metric in m.metrics]
    return float(np.mean(values)) if values else math.inf
