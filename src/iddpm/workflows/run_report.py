"""`iddpm report RUN`: the story of any training run, written into the run.

RUN/report/report.md with its PNGs beside it: loss and loss by timestep quartile, held-out
and training bits/dim with error bands, FID over training, the importance sampler's p_t as
a heat map, sample grids over time, where the bound's bits are, and the learned-Σ audit
(workflows/sigma_audit.py). Markdown, because it renders offline in any editor, on GitHub
and in a terminal, diffs in review, and links its PNGs relatively: the folder can be copied
or zipped whole. Figures whose data the run never logged (no --eval-every, no FID, a
uniform timestep sampler) are left out with a line saying how to get them.

Everything is checked before anything is written: a run folder without metrics.jsonl (or
without a single training record in it) is a one-line error.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iddpm._io import read_jsonl, write_json
from iddpm.build import load_model
from iddpm.checkpoint import CONFIG_FILE, METRICS_FILE, SAMPLES_DIR
from iddpm.config import ExperimentConfig
from iddpm.workflows import run_plots
from iddpm.workflows.plots import plot_bound_terms, plot_training_curves
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.report import write_report
from iddpm.workflows.runs import check_writable_dir, has_checkpoints
from iddpm.workflows.sigma_audit import sigma_audit
from iddpm.workflows.statistics import StatsConfig
from iddpm.workflows.train import run_config

REPORT_DIR = "report"
_GRID = re.compile(r"^grid_(\d+)\.png$")
INTRO = (
    "What this run learned, from its own logs: the training loss, the Monte-Carlo bound "
    "on held-out and training images (the slowest EMA, the same noise at every evaluation), "
    "sample quality, the importance sampler's p_t, and whether the learned variance is the "
    "optimal one."
)


@dataclass(frozen=True)
class ReportJob:
    """Report on `run_dir`; `audit`: run the learned-Σ audit on its latest checkpoint
    (network calls on `stats.num_images` training images at 50 steps)."""

    run_dir: Path
    audit: bool = True
    stats: StatsConfig = field(default_factory=lambda: StatsConfig(num_images=200))


def _check(run: Path) -> list[dict[str, Any]]:
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a run folder; pass the --run-dir of a training")
    metrics = run / METRICS_FILE
    if not metrics.is_file():
        raise FileNotFoundError(
            f"{run} has no {METRICS_FILE}; report on a run folder that `iddpm train` wrote "
            "(it logs every --log-every steps)"
        )
    rows = [r for r in read_jsonl(metrics) if isinstance(r, dict) and "step" in r]
    if not any("loss" in r for r in rows):
        raise ValueError(
            f"{metrics} holds no training record; train longer than --log-every steps first"
        )
    check_writable_dir(run / REPORT_DIR, "the report folder")
    return rows


def _config(run: Path) -> ExperimentConfig | None:
    if (run / CONFIG_FILE).is_file() or has_checkpoints(run):
        try:
            return run_config(run)
        except (OSError, ValueError):
            return None
    return None


def _grids(run: Path) -> list[tuple[int, Path]]:
    folder = run / SAMPLES_DIR
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _GRID.match(p.name)))


def _exact_terms(run: Path) -> tuple[Path, list[float], float] | None:
    """The per-term CSV `iddpm nll RUN --split test` wrote for the full process, if any:
    (file, terms [T] in bits/dim, prior)."""
    for path in sorted((run / "eval").glob("nll_test*_terms.csv")):
        if "_mc" in path.name:
            continue
        lines = [line.split(",") for line in path.read_text().splitlines()[1:] if line]
        try:
            terms = [float(r[2]) for r in lines if r[1] != "prior"]
            prior = next(float(r[2]) for r in lines if r[1] == "prior")
        except (IndexError, ValueError, StopIteration):
            continue
        return path, terms, prior
    return None


def _last(rows: list[dict], key: str) -> dict | None:
    return next((r for r in reversed(rows) if isinstance(r.get(key), int | float)), None)


def _numbers(rows: list[dict], audit: dict | None) -> list[tuple[str, Any, str]]:
    out: list[tuple[str, Any, str]] = []
    last = _last(rows, "loss")
    if last:
        out.append(("training loss (last log)", last["loss"], f"step {last['step']}"))
    ev = _last(rows, "eval_heldout_bpd")
    if ev:
        for name, what in (("heldout", "held-out"), ("train", "training subset")):
            se = ev.get(f"eval_{name}_bpd_se", math.nan)
            out.append(
                (f"{what} bits/dim (MC)", ev[f"eval_{name}_bpd"], f"± {se:.3f}, step {ev['step']}")
            )
        held = [r for r in rows if "eval_heldout_bpd" in r]
        best = min(held, key=lambda r: r["eval_heldout_bpd"])
        out.append(("best held-out bits/dim", best["eval_heldout_bpd"], f"step {best['step']}"))
        flagged = [r["step"] for r in held if r.get("eval_overfitting")]
        note = f"first at step {flagged[0]}" if flagged else "never fired"
        out.append(("overfitting warnings", len(flagged), note))
    fid = _last(rows, "fid")
    if fid:
        what = f"{fid.get('fid_samples')} samples, {fid.get('fid_sampler')} {fid.get('fid_steps')}"
        out.append(("FID (last)", fid["fid"], f"{what}, step {fid['step']}"))
    if audit:
        out.append(
            (
                "learned Σ vs optimal: mean |log ratio|",
                audit["mean_abs_log_ratio"],
                f"{audit['steps']}-step process, {audit['num_images']} images",
            )
        )
    return out


def _figure_steps(
    run: Path, rows: list[dict], cfg: ExperimentConfig | None, audit: dict | None
) -> list[tuple[str, Callable[[Path], Path], str]]:
    """(caption, draw(path) -> path, text) of every figure the run can have."""
    t = cfg.diffusion.num_timesteps if cfg else 1000
    metrics = run / METRICS_FILE
    steps: list[tuple[str, Callable[[Path], Path], str]] = [
        (
            "Training loss",
            lambda p: plot_training_curves(p, metrics),
            "Loss per example and by timestep quartile (q0: smallest t); faint: raw, bold: "
            "moving average.",
        ),
        (
            "Held-out vs training bits/dim",
            lambda p: run_plots.plot_bits_per_dim_over_training(p, rows),
            "The unbiased Monte-Carlo bound (log-stratified steps) of fixed held-out and "
            "training images, EMA weights, the same noise at every evaluation; a held-out "
            "curve rising while the training one falls is overfitting.",
        ),
        (
            "FID over training",
            lambda p: run_plots.plot_fid_over_training(p, rows),
            "FID of the periodic samples (same seeds every time) against the training "
            "split's features, with precision and recall.",
        ),
        (
            "Importance sampler p_t",
            lambda p: run_plots.plot_pt_heatmap(p, rows, t),
            "Where the importance sampler draws t (relative to uniform) as training goes.",
        ),
        (
            "Samples over training",
            lambda p: run_plots.plot_sample_grids_over_time(p, _grids(run)),
            "The sample grids the run wrote (same seeds every time).",
        ),
        (
            "Where the bits are",
            lambda p: run_plots.plot_bound_terms_by_stratum(p, rows, t),
            "The held-out bound's terms per log-stratum of t, per step of t, at the first "
            "and last evaluation (`iddpm nll RUN` gives every term exactly).",
        ),
    ]
    exact = _exact_terms(run)
    if exact is not None:
        steps.append(
            (
                "Every term of the bound",
                lambda p: plot_bound_terms(p, exact[1], exact[2]),
                f"Each term of the exact bound on the test split and its cumulative share "
                f"(from {exact[0].name}, written by `iddpm nll`).",
            )
        )
    if audit:
        steps.append(
            (
                "Learned-Σ audit",
                lambda p: run_plots.plot_sigma_audit(p, audit),
                "The model's reverse variance per step (mean over images, 10–90% band) "
                "against Analytic-DPM's optimal variance for the same ε-predictor: on the "
                "dashed line, L_hybrid learned the optimal Σ.",
            )
        )
    return steps


def _slug(caption: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", caption.lower().replace("σ", "sigma")).strip("_")


def run_report(
    job: ReportJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """The `iddpm report` job: RUN/report/report.md and its PNGs; returns what it wrote."""
    run = job.run_dir.expanduser()
    rows = _check(run)
    cfg = _config(run)
    audit = None
    if job.audit and has_checkpoints(run):
        loaded = load_model(run, use_ema=True, device=device)
        audit = sigma_audit(loaded, device, job.stats, progress)
    folder = run / REPORT_DIR
    figures, skipped = [], {}
    for caption, draw, text in _figure_steps(run, rows, cfg, audit):
        try:
            figures.append((caption, draw(folder / f"{_slug(caption)}.png"), text))
        except ValueError as e:  # the run never logged what this figure needs
            skipped[caption] = str(e)
    if audit:
        write_json(folder / "sigma_audit.json", audit, indent=1)
    intro = INTRO
    if skipped:
        intro += "\n\nNot in this run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())
    numbers = _numbers(rows, audit)
    r = str(run)
    path = write_report(
        folder / "report.md",
        f"Training report: {run.name}",
        intro,
        numbers,
        figures,
        {
            "This report": f"iddpm report {r}",
            "The exact bound of the test split": f"iddpm nll {r} --split test",
            "Continue training": f"iddpm train --resume --run-dir {r}",
        },
    )
    return {
        "report": str(path),
        "figures": [str(p) for _, p, _ in figures],
        "skipped": skipped,
        "numbers": {what: value for what, value, _ in numbers},
    }
