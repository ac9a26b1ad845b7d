"""Figures of a run over its training, from metrics.jsonl and its sample grids: held-out and
training bits/dim with error bands, FID, the importance sampler's p_t as a heat map, sample
grids over time, the bound's terms per stratum, and the learned-Σ audit.

Same conventions as `plots.py` (Figure objects and the Agg canvas only, one PNG per call,
written atomically, its path returned, one-line ValueErrors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from iddpm.workflows.plots import _figure, _save


def _column(rows: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [
        (r["step"], r[key])
        for r in rows
        if isinstance(r.get(key), int | float) and not isinstance(r.get(key), bool)
        and math.isfinite(r[key])
    ]  # fmt: skip
    return np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)


def plot_bits_per_dim_over_training(path: str | Path, rows: Sequence[dict]) -> Path:
    """Held-out and training bits/dim (Monte-Carlo, EMA weights, common random numbers)
    against the step; bands: ± 2 standard errors over the images."""
    fig, (ax,) = _figure(6.5, 4.2)
    drawn = False
    for i, name in enumerate(("heldout", "train")):
        x, y = _column(rows, f"eval_{name}_bpd")
        if not len(x):
            continue
        _, se = _column(rows, f"eval_{name}_bpd_se")
        se = se if len(se) == len(y) else np.zeros_like(y)
        label = "held-out" if name == "heldout" else "training subset"
        ax.plot(x, y, marker="o", ms=3, color=f"C{i}", label=label)
        ax.fill_between(x, y - 2 * se, y + 2 * se, color=f"C{i}", alpha=0.2, lw=0)
        drawn = True
    if not drawn:
        raise ValueError("no eval_heldout_bpd in the metrics; train with --eval-every N")
    best_x, best_y = _column(rows, "eval_heldout_bpd")
    k = int(np.argmin(best_y))
    ax.annotate(f"best {best_y[k]:.3f}", (best_x[k], best_y[k]), textcoords="offset points",
                xytext=(0, -14), ha="center", fontsize=8)  # fmt: skip
    ax.set(xlabel="training step", ylabel="bits/dim (bound, Monte-Carlo)")
    ax.set_title("held-out vs training bits/dim (bands: ± 2 s.e. over images)")
    ax.legend()
    return _save(fig, path)


def plot_fid_over_training(path: str | Path, rows: Sequence[dict]) -> Path:
    """FID (and precision/recall when logged) of the periodic samples against the step."""
    x, y = _column(rows, "fid")
    if not len(x):
        raise ValueError("no fid in the metrics; train with --fid-every N")
    fig, (ax, ax_pr) = _figure(10.0, 4.0, ncols=2)
    ax.plot(x, y, marker="o", ms=3)
    ax.set_yscale("log")
    sampler = next((r for r in rows if "fid_sampler" in r), {})
    what = f"{sampler.get('fid_sampler', '')}, {sampler.get('fid_steps', '')} steps"
    ax.set(xlabel="training step", ylabel="FID", title=f"FID of samples ({what})")
    for i, key in enumerate(("fid_precision", "fid_recall", "fid_confident_fraction")):
        px, py = _column(rows, key)
        if len(px):
            ax_pr.plot(px, py, marker="o", ms=3, color=f"C{i}", label=key[4:])
    ax_pr.set(xlabel="training step", ylim=(0, 1), title="precision, recall (k = 3)")
    if ax_pr.lines:
        ax_pr.legend()
    return _save(fig, path)


def plot_pt_heatmap(path: str | Path, rows: Sequence[dict], num_timesteps: int) -> Path:
    """The importance sampler's p_t (summed over buckets of t) over training, as a heat map
    of p_t · T (1 = uniform)."""
    pts = [(r["step"], r["p_t"]) for r in rows if isinstance(r.get("p_t"), list) and r["p_t"]]
    if not pts:
        raise ValueError("no p_t in the metrics; it is logged with --timestep-sampler importance")
    steps = np.array([p[0] for p in pts], float)
    grid = np.array([p[1] for p in pts], float).T  # [buckets, records]
    grid = grid * grid.shape[0]  # relative to uniform
    fig, (ax,) = _figure(7.0, 4.0)
    ax.grid(False)
    im = ax.imshow(
        grid, aspect="auto", origin="lower", cmap="magma",
        extent=(steps[0], steps[-1], 0, num_timesteps),
    )  # fmt: skip
    fig.colorbar(im, ax=ax, label="p_t relative to uniform")
    ax.set(xlabel="training step", ylabel="diffusion step t")
    ax.set_title("importance sampler: p_t ∝ sqrt(E[L_t²]) over training")
    return _save(fig, path)


def plot_sample_grids_over_time(path: str | Path, grids: Sequence[tuple[int, Path]]) -> Path:
    """Up to 6 of the run's sample grids (evenly spread over training), side by side."""
    if not grids:
        raise ValueError("no sample grids in RUN/samples; train with --sample-every N")
    pick = sorted(grids)
    if len(pick) > 6:
        pick = [pick[round(i * (len(pick) - 1) / 5)] for i in range(6)]
    fig, axes = _figure(2.2 * len(pick), 2.6, ncols=len(pick))
    for ax, (step, png) in zip(axes, pick):
        with Image.open(png) as img:
            ax.imshow(np.asarray(img.convert("L")), cmap="gray", vmin=0, vmax=255)
        ax.set_axis_off()
        ax.set_title(f"step {step}", fontsize=9)
    return _save(fig, path)


def plot_bound_terms_by_stratum(path: str | Path, rows: Sequence[dict], num_timesteps: int) -> Path:
    """Bits/dim each log-stratum of t contributes to the held-out bound, per step of the
    stratum (a density over t), at the first and the last evaluation."""
    evals = [r for r in rows if isinstance(r.get("eval_terms_bpd"), list)]
    if not evals:
        raise ValueError("no eval_terms_bpd in the metrics; train with --eval-every N")
    fig, (ax,) = _figure(6.5, 4.2)
    chosen = [evals[0], evals[-1]] if len(evals) > 1 else [evals[-1]]
    for i, r in enumerate(chosen):
        starts = np.array(r["eval_strata"], float)
        ends = np.append(starts[1:], num_timesteps)
        terms = np.array(r["eval_terms_bpd"], float)
        density = terms / np.maximum(ends - starts, 1)
        ax.step(starts + 1, density, where="post", color=f"C{i}",
                label=f"step {r['step']} (sum {terms.sum():.3f} + prior)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="diffusion step t + 1", ylabel="bits/dim per step of t")
    ax.set_title("where the held-out bound's bits are (log strata)")
    ax.legend()
    return _save(fig, path)


def plot_sigma_audit(path: str | Path, audit: dict[str, Any]) -> Path:
    """Learned reverse variance (mean over images, 10–90% band) against Analytic-DPM's
    optimal variance for the same model, with β̃ and β, per step of the respaced process;
    right: the ratio learned / analytic."""
    t = np.asarray(audit["t"], float) + 1
    fig, (ax, ax_r) = _figure(10.0, 4.0, ncols=2)
    ax.fill_between(t, audit["learned_lo"], audit["learned_hi"], color="C0", alpha=0.2, lw=0)
    ax.plot(t, audit["learned"], color="C0", lw=1.8, label="learned Σ (mean over images)")
    ax.plot(t, audit["analytic"], color="C3", lw=1.8, ls="--", label="Analytic-DPM optimum")
    ax.plot(t, audit["small"], color="0.4", lw=1, ls=":", label="β̃ (fixed small)")
    ax.plot(t, audit["large"], color="0.2", lw=1, ls="-.", label="β (fixed large)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="diffusion step t + 1", ylabel="reverse variance σ²_t")
    ax.set_title(f"learned vs optimal Σ ({len(t)}-step process)")
    ax.legend(fontsize=8)
    ratio = np.asarray(audit["learned"], float) / np.asarray(audit["analytic"], float)
    ax_r.plot(t, ratio, color="C0")
    ax_r.axhline(1.0, color="0.3", lw=1)
    ax_r.set_xscale("log")
    ax_r.set_yscale("log")
    ax_r.set(xlabel="diffusion step t + 1", ylabel="learned / analytic")
    ax_r.set_title("ratio (1: L_hybrid learned the optimal Σ)")
    return _save(fig, path)
