"""docs/reproduction.md from the cached units: tables, verdicts, figures and caveats.

The prose lives in `report_template.md`; this module only computes what fills it
(numbers, tables, lists). `make_report` reads the cache, writes the figures and results
files into the report's sibling folder and renders the page.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from experiments.ablate import library
from experiments.ablate.cache import UnitFiles, read_invocations, read_json
from experiments.ablate.figures import (
    Figure,
    SampleGrids,
    copy_sample_grids,
    fid_step_counts,
    plot_all,
)
from experiments.ablate.plan import OBJECTIVES, SIGMA_LABELS, Arm, Settings, Unit
from experiments.ablate.results_files import write_results
from experiments.ablate.stats import CURVE_KEYS, ArmSummary, SeedSpread, collect, summarize
from experiments.ablate.template import Templates
from experiments.ablate.verdicts import Verdict, verdicts


def run_meta(
    templates: Templates,
    command: str,
    wall_s: float,
    jobs: int,
    threads: int,
    seeds: Sequence[int],
    linear_seeds: Sequence[int],
    long_timesteps: int,
    cores: int | None,
) -> dict[str, Any]:
    """How this invocation ran, for `make_report`'s `meta`."""
    seeds_text = templates.fill(
        "seeds",
        cosine=list(seeds),
        linear=list(linear_seeds),
        long_timesteps=long_timesteps,
        long=list(seeds[:1]),
    )
    return {
        "command": command,
        "wall_s": wall_s,
        "machine": templates.fill("machine", arch=platform.machine(), cores=cores),
        "jobs": jobs,
        "threads": threads,
        "seeds_text": seeds_text,
    }


def make_report(
    out: Path,
    plan: Sequence[Unit],
    settings: Settings,
    report: Path,
    meta: dict[str, Any],
    templates: Templates | None = None,
) -> dict[str, Any]:
    """Read every cached unit of `plan` under OUT, write the figures and results files into
    REPORT's sibling folder (docs/reproduction.md -> docs/reproduction/) and the report.

    meta: command, wall_s, machine, jobs, threads, seeds_text (see `run_meta`); it goes
    into results.json with what this function adds. Returns the verdicts and paths."""
    templates = templates or Templates.load()
    results = {}
    for unit in plan:
        path = UnitFiles.of(out, unit).result
        results[unit.name] = read_json(path) if path.is_file() else {"skipped": True}
    measurements = collect(results)
    summary = summarize(measurements)
    claims = verdicts(measurements)
    folder = report.with_suffix("")
    figures = plot_all(out, plan, summary, settings.curve_window, folder)
    figures = [replace(f, path=_relative(f.path, report)) for f in figures]
    grids = copy_sample_grids(out, plan, folder)
    skipped = [name for name, result in results.items() if "variants" not in result]
    wall, invocations = _invocations(out, templates)
    observations = folder / "observations.md"  # optional hand-written reading, verbatim
    meta = {
        **meta,
        "compute_wall_s": wall,
        "invocations_text": invocations,
        "settings": asdict(settings),
        "units_planned": len(plan),
        "units_done": len(plan) - len(skipped),
        "skipped": skipped,
        "train_images": library.train_image_count(),
        "curve_note": templates.fill("curve_note"),
        "grids_md": _grids_table(grids, report),
        "observations": observations.read_text() if observations.is_file() else "",
        "observations_path": observations.relative_to(report.parent).as_posix(),
        "notes": _notes(claims, summary, settings.train_steps, templates),
    }
    json_path, csv_path = write_results(folder, measurements, summary, claims, meta)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_report(summary, claims, meta, figures, templates))
    return {
        "report": str(report),
        "results_json": str(json_path),
        "results_csv": str(csv_path),
        "verdicts": {key: claim.verdict for key, claim in claims.items()},
        "units_done": meta["units_done"],
    }


def _relative(path: Path, report: Path) -> Path:
    return path.resolve().relative_to(report.parent.resolve())


def _invocations(out: Path, templates: Templates) -> tuple[float, str]:
    """Total wall-clock of the logged invocations that computed units, and a summary."""
    work = [invocation for invocation in read_invocations(out) if invocation.computed]
    total = float(sum(invocation.wall_s for invocation in work))
    parts = [
        templates.fill("invocation", minutes=f"{i.wall_s / 60:.1f}", units=len(i.computed))
        for i in work
    ]
    return total, ", ".join(parts) or templates.fill("no_invocations")


def _grids_table(grids: Sequence[SampleGrids], report: Path) -> str:
    """A Markdown table of the copied sample grids ('' when there are none)."""
    if not grids:
        return ""
    rows = []
    for grid in grids:
        arm = f"{OBJECTIVES[grid.objective].label} ({SIGMA_LABELS[grid.var_type]})"
        links = [f"![{p.stem}]({_relative(p, report).as_posix()})" for p in grid.images]
        rows.append([arm, *links])
    return library.markdown_table(rows, ["arm", "smallest K", "full chain"])


def _notes(
    claims: dict[str, Verdict], summary: dict[Arm, ArmSummary], steps: int, templates: Templates
) -> list[str]:
    """The caveats: claims not reproduced, arms that did not learn to sample, the NLL
    ordering per schedule, then the fixed caveats of this scale."""
    notes = [
        templates.fill("note.verdict", key=key, claim=c.claim, verdict=c.verdict, reason=c.reason)
        for key, c in claims.items()
        if c.verdict != "reproduced"
    ]
    full_chain = {arm: s.mean(f"fid_{arm.timesteps}") for arm, s in summary.items()}
    best = min((v for v in full_chain.values() if math.isfinite(v)), default=math.nan)
    bad = [arm.label for arm, v in full_chain.items() if math.isfinite(v) and v > 10 * best]
    if bad:
        notes.append(templates.fill("note.undertrained", best=f"{best:.1f}", arms="; ".join(bad)))
    for schedule in ("cosine", "linear"):
        order = _nll_order(summary, schedule)
        if order is not None:
            notes.append(templates.fill("note.nll_order", schedule=schedule, **order))
    notes.append(templates.fill("note.scale", train_steps=steps))
    notes += [templates.fill(f"note.{name}") for name in ("fid_bias", "single_seed", "paired")]
    return notes


def _nll_order(summary: dict[Arm, ArmSummary], schedule: str) -> dict[str, Any] | None:
    """The arms of `schedule` at its shortest T ranked by mean bpd; None for < 2 arms."""
    arms = [(arm, s) for arm, s in summary.items() if arm.schedule == schedule]
    arms = [(arm, s) for arm, s in arms if "bpd" in s.stats]
    shortest = min((arm.timesteps for arm, _ in arms), default=0)
    ranked = sorted((s.stats["bpd"].mean, arm) for arm, s in arms if arm.timesteps == shortest)
    if len(ranked) < 2:
        return None
    order = " < ".join(
        f"{OBJECTIVES[arm.objective].label} ({SIGMA_LABELS[arm.var_type]}) {bpd:.3f}"
        for bpd, arm in ranked
    )
    return {"timesteps": shortest, "order": order}


def _mean_sd(spread: SeedSpread | None, digits: int = 3) -> str:
    """ "mean ± sd" ("mean" for one seed, "–" when not measured)."""
    if spread is None or not math.isfinite(spread.mean):
        return "–"
    text = f"{spread.mean:.{digits}f}"
    return text + (f" ± {spread.sd:.{digits}f}" if math.isfinite(spread.sd) else "")


def render_report(
    summary: dict[Arm, ArmSummary],
    claims: dict[str, Verdict],
    meta: dict[str, Any],
    figures: Sequence[Figure],
    templates: Templates,
) -> str:
    """The Markdown of docs/reproduction.md; figure paths relative to the report."""
    settings = meta["settings"]
    skipped = meta["skipped"]
    page = templates.fill(
        "page",
        command=meta["command"],
        compute_minutes=f"{meta['compute_wall_s'] / 60:.1f}",
        invocations=meta["invocations_text"],
        machine=meta["machine"],
        jobs=meta["jobs"],
        threads=meta["threads"],
        train_images=meta["train_images"],
        train_steps=settings["train_steps"],
        seeds=meta["seeds_text"],
        nll_images=settings["nll_images"],
        fid_samples=settings["fid_samples"],
        sample_steps=list(settings["sample_steps"]),
        full_chain_max_t=settings["full_chain_max_t"],
        units_done=meta["units_done"],
        units_planned=meta["units_planned"],
        units_skipped=templates.fill("units_skipped", units=", ".join(skipped)) if skipped else "",
        results_table=_results_table(summary, settings),
        verdicts_table=_verdicts_table(claims),
        curve_note=meta["curve_note"],
        curve_table=_curve_table(summary),
    )
    sections = [page, *(_figure_section(figure, templates) for figure in figures)]
    if meta.get("grids_md"):
        sections.append(templates.fill("samples", grids=meta["grids_md"]))
    notes = "\n".join(f"- {note}" for note in meta["notes"])
    sections.append(templates.fill("caveats", notes=notes))
    if meta.get("observations"):
        observations = meta["observations"].strip()
        path = meta["observations_path"]
        sections.append(templates.fill("observations", path=path, observations=observations))
    return "\n\n".join(sections).rstrip() + "\n"


def _figure_section(figure: Figure, templates: Templates) -> str:
    title = templates.fill(f"{figure.kind}.title", schedule=figure.schedule)
    caption = templates.fill(f"{figure.kind}.caption")
    return templates.fill("figure", title=title, caption=caption, path=figure.path.as_posix())


def _results_table(summary: dict[Arm, ArmSummary], settings: dict[str, Any]) -> str:
    """Tables 1–2's form: one row per arm, NLL and digits-FID at every K (mean ± sd)."""
    steps = fid_step_counts(summary)
    header = ["steps", "T", "schedule", "objective", "σ²", "seeds", "NLL (bits/dim)"]
    header += [f"FID K={k}" if k in settings["sample_steps"] else f"FID full ({k})" for k in steps]
    rows = []
    for arm, s in summary.items():
        nll = _mean_sd(s.stats.get("bpd")) + f" (img s.e. {s.bpd_image_se:.3f})"
        fids = [_mean_sd(s.stats.get(f"fid_{k}"), 2) for k in steps]
        objective, sigma = OBJECTIVES[arm.objective].label, SIGMA_LABELS[arm.var_type]
        row = [settings["train_steps"], arm.timesteps, arm.schedule, objective, sigma]
        rows.append([*row, len(s.seeds), nll, *fids])
    return library.markdown_table(rows, header)


def _verdicts_table(claims: dict[str, Verdict]) -> str:
    rows = [
        [key, c.claim, f"**{c.verdict}**", "; ".join(c.evidence), c.reason]
        for key, c in claims.items()
    ]
    return library.markdown_table(rows, ["", "claim", "verdict", "number ± u", "why"])


def _curve_table(summary: dict[Arm, ArmSummary]) -> str:
    """The smoothness statistics of the L_vlb arms (mean ± sd over seeds)."""
    rows = [
        [arm.label, len(s.seeds), *[_mean_sd(s.stats.get(key)) for key in CURVE_KEYS]]
        for arm, s in summary.items()
        if arm.objective.startswith("vlb")
    ]
    return library.markdown_table(rows, ["arm", "seeds", *CURVE_KEYS])
