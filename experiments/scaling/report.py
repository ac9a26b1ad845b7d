"""The scaling report: held-out bound and digits-FID against training compute per width,
the compute-efficient frontier and its power-law fit (docs/scaling.md + docs/img PNGs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from experiments.scaling.fit import PowerLaw, fit_power_law, frontier
from iddpm._io import write_json, write_text
from iddpm.workflows.plots import _figure, _save
from iddpm.workflows.report import markdown_table

IMG = "img"


def _plot(path: Path, results: list[dict], key: str, points: str, label: str, fit) -> Path:
    fig, (ax,) = _figure(6.5, 4.5)
    for i, r in enumerate(results):
        rows = r[points]
        if not rows:
            continue
        c = np.array([p["compute"] for p in rows], float)
        y = np.array([p[key] for p in rows], float)
        ax.plot(c, y, marker="o", ms=3, color=f"C{i}", label=f"width {r['width']}")
        if key == "heldout_bpd":
            se = np.array([p["heldout_se"] for p in rows], float)
            ax.fill_between(c, y - 2 * se, y + 2 * se, color=f"C{i}", alpha=0.15, lw=0)
    if fit is not None:
        law, fx, fy = fit
        grid = np.geomspace(fx.min(), fx.max(), 50)
        lo, hi = law.band(grid, fx, fy)
        ax.plot(grid, law(grid), color="k", lw=1.5, ls="--",
                label=f"frontier fit: C^{law.b:.3f} [{law.b_lo:.3f}, {law.b_hi:.3f}]")  # fmt: skip
        ax.fill_between(grid, lo, hi, color="k", alpha=0.1, lw=0)
        ax.scatter(fx, fy, s=40, facecolors="none", edgecolors="k", zorder=5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set(xlabel="training compute (FLOPs)", ylabel=label)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _fit(results: list[dict], points: str, key: str) -> tuple[PowerLaw, Any, Any] | None:
    pts = [(p["compute"], p[key]) for r in results for p in r[points]]
    front = frontier(pts)
    if len(front) < 3:
        return None
    x, y = np.array([p[0] for p in front]), np.array([p[1] for p in front])
    return fit_power_law(x, y), x, y


def _law_row(what: str, fit) -> list:
    if fit is None:
        return [what, "n/a", "", "", "fewer than 3 frontier points"]
    law = fit[0]
    return [what, law.b, f"[{law.b_lo:.3f}, {law.b_hi:.3f}]", law.r2, law.n]


def write_scaling_report(
    path: Path, results: list[dict], budget: float, budget_steps: int, command: str
) -> dict[str, Any]:
    img = path.parent / IMG
    bpd_fit = _fit(results, "evals", "heldout_bpd")
    fid_fit = _fit(results, "fids", "fid")
    figs = {
        "bpd": _plot(img / "scaling_bpd.png", results, "heldout_bpd", "evals",
                     "held-out bits/dim (MC bound, ± 2 s.e.)", bpd_fit),
        "fid": _plot(img / "scaling_fid.png", results, "fid", "fids",
                     "digits-FID (256 samples, 25 ancestral steps)", fid_fit),
    }  # fmt: skip
    rows = []
    for r in results:
        last = r["evals"][-1] if r["evals"] else {}
        fid = r["fids"][-1]["fid"] if r["fids"] else float("nan")
        rows.append([
            r["width"], r["parameters"], r["flops_per_step"] / 1e9, r["steps"],
            last.get("heldout_bpd", float("nan")), last.get("heldout_se", float("nan")),
            fid, r["train_wall_s"] or float("nan"),
        ])  # fmt: skip
    table = markdown_table(
        rows,
        ["width", "parameters", "GFLOPs/step", "steps", "held-out bpd", "± s.e.",
         "digits-FID", "train s"],
    )  # fmt: skip
    laws = markdown_table(
        [_law_row("held-out bits/dim", bpd_fit), _law_row("digits-FID", fid_fit)],
        ["frontier of", "exponent b", "95% interval", "R² (log-log)", "points"],
    )
    rel = {k: os.path.relpath(v, path.parent) for k, v in figs.items()}
    text = f"""# Scaling on the digits: width against training compute

The paper's §6 view on a laptop-sized problem: the digits preset's UNet at {len(results)}
base widths, each trained on the same FLOP budget ({budget:.3g} FLOPs: {budget_steps}
steps of the width-32 preset model), so narrow models take more steps. FLOPs per step are
counted by `torch.utils.flop_counter` on one real training step (forward and backward of
the batch of 64; optimizer and EMA not counted). Every run evaluates itself during
training (`--eval-every`, `--fid-every`): the held-out bound is the Monte-Carlo bits/dim
of 100 test digits (16 log-stratified steps each, the EMA weights, the same noise at every
evaluation), digits-FID is of 256 samples of 25 ancestral steps against the training split.

The compute-efficient frontier (circled: points that no point of less compute beats) is
fitted with a power law y = a·C^b by least squares on log-log axes; the interval is the
95% t-interval of b. With this small budget the runs are far from converged and the
frontier has few points, so the exponents are descriptive of this range of compute only.
Training took {sum(r["train_wall_s"] or 0 for r in results) / 60:.0f} minutes in all on a
shared 2-core CPU (other jobs running, load 7–12), so the wall times are noisy; the FLOP
counts and the metrics are deterministic given the seed.

## Runs

{table}

## Power-law fits of the frontier

{laws}

## Held-out bound against compute

![held-out bits/dim against training compute]({rel["bpd"]})

## digits-FID against compute

![digits-FID against training compute]({rel["fid"]})

## Reproduce

    {command}
"""
    write_text(path, text)
    summary = {
        "bpd_fit": None if bpd_fit is None else bpd_fit[0].__dict__,
        "fid_fit": None if fid_fit is None else fid_fit[0].__dict__,
        "figures": {k: str(v) for k, v in figs.items()},
    }
    write_json(path.with_suffix(".json"), {"runs": results, "budget_flops": budget, **summary})
    return summary
