"""Sweeps: sample quality (and the K-step bound where it is defined) for every pair of a
sampler and a number of steps K, as CSV and plots with one line per sampler (the paper's
Figure 8 view, extended to other samplers)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iddpm._io import write_csv, write_json
from iddpm.build import LoadedModel, load_model
from iddpm.config import EvalConfig, SampleConfig
from iddpm.diffusion import registry, respace
from iddpm.workflows import runtime
from iddpm.workflows.context import JobContext, StatsConfig
from iddpm.workflows.guidance import guidance_label, guidance_tag
from iddpm.workflows.nll import bits_per_dim_of
from iddpm.workflows.plan import SamplingPlan
from iddpm.workflows.plots import plot_metric_vs_steps
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.quality import (
    BOOTSTRAP,
    extractor_for,
    mark_ties,
    reference,
    sample_and_score,
)
from iddpm.workflows.runs import check_writable_dir, run_of
from iddpm.workflows.sample import num_steps
from iddpm.workflows.steps import StepsJob, schedules

SPACINGS = ("", *respace.SPACINGS, "best")  # "" = even; "best": each sampler's own
OPTIMAL = "bound-optimal"


@dataclass(frozen=True)
class SweepJob:
    """Every (sampler, step count) pair of `samplers` × `steps` ("full" = all T steps):
    `num` samples each, scored (FID with a 95% bootstrap interval, IS, KID, precision/
    recall) against `ref` (default: the training data), and each row marked "best", "tie"
    (not significantly worse than the best: paired bootstrap, the rows share their seed) or
    "worse" under fid_vs_best; with `nll_images` > 0 also the K-step bound on that many
    test images where the sampler has one. `spacing` prefixes plain counts ("trailing" turns
    "10" into "trailing10"; "best": each sampler's registered `spacing`); with `nfe`, plain
    counts are network-call budgets (K: the most steps that fit, e.g. 5 for Heun at 10
    calls); `optimal_steps` adds the ancestral sampler on the bound-optimal K-step
    schedule (`iddpm steps`, costs on `steps_images` training images) as its own rows."""

    checkpoint: Path
    samplers: tuple[str, ...] = ("ancestral",)
    steps: tuple[str, ...] = ("25", "50", "100", "250", "full")
    sampler_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    spacing: str = ""
    nfe: bool = False
    num: int = 256
    seed: int = 0
    batch_size: int = 256
    ref: str | None = None
    features: str = "digits"
    nll_images: int = 0
    optimal_steps: bool = False
    steps_images: int = 256
    stats: StatsConfig = field(default_factory=StatsConfig)
    out_dir: Path | None = None
    guidance_scales: tuple[float, ...] = (1.0,)
    classifier: str = ""
    classifier_scales: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class Entry:
    """One row of the sweep: the plan of what is sampled, its label in tables and plots,
    and the schedule's name."""

    plan: SamplingPlan
    label: str
    schedule: str
    budget: int | None = None  # the network-call budget asked for (--nfe), if any


def _spec(job: SweepJob, text: str, num_timesteps: int, name: str = "") -> str:
    if text == "full":
        return str(num_timesteps)
    if not text.isdigit():
        return text
    entry = registry.get(name) if name else None
    count = entry.steps_for_calls(int(text)) if job.nfe and entry else int(text)
    spacing = (entry.spacing if entry else "") if job.spacing == "best" else job.spacing
    return f"{spacing}{count}"


def _spacing_name(job: SweepJob, name: str) -> str:
    spacing = registry.get(name).spacing if job.spacing == "best" else job.spacing
    return spacing or "even"


def _plan(job: SweepJob, loaded: LoadedModel, ctx: JobContext) -> list[Entry]:
    """Every sampling request of the sweep, validated before any work (the bound-optimal
    schedules are computed here, since they are part of the plan)."""
    if job.spacing not in SPACINGS:
        raise ValueError(
            f"unknown --spacing {job.spacing!r}; choose even, {', '.join(SPACINGS[1:])}"
        )
    T = loaded.config.diffusion.num_timesteps
    specs = [_spec(job, s, T) for s in job.steps]
    base = SampleConfig(num=job.num, batch_size=job.batch_size, seed=job.seed)
    entries = []
    classifier = None
    for name in job.samplers:
        options = job.sampler_options.get(name, {})
        for text in job.steps:
            spec = _spec(job, text, T, name)
            for guidance in _guidance(job):
                request = base.replace(
                    steps=spec, sampler=name, sampler_options=options, **guidance
                )
                plan = SamplingPlan(loaded, request, ctx, classifier=classifier)
                classifier = plan.classifier  # loaded (and checked) once
                label = plan.label + guidance_label(request)
                budget = int(text) if job.nfe and text.isdigit() else None
                entries.append(Entry(plan, label, _spacing_name(job, name), budget))
    if job.optimal_steps:
        counts = tuple(sorted({num_steps(loaded, s) for s in specs}))
        steps_job = StepsJob(job.checkpoint, nfe=counts, num_images=job.steps_images,
                             seed=job.seed, stats=job.stats)  # fmt: skip
        for row in schedules(steps_job, loaded, ctx):
            plan = SamplingPlan(loaded, base.replace(steps=row["spec"]), ctx)
            entries.append(Entry(plan, f"{plan.label} ({OPTIMAL} steps)", OPTIMAL))
    return entries


def _guidance(job: SweepJob) -> list[dict[str, Any]]:
    """The guidance settings the sweep compares: every W, times every S with a
    classifier."""
    scales = job.classifier_scales if job.classifier else (1.0,)
    return [
        {"guidance_scale": w, "classifier": job.classifier, "classifier_scale": s}
        for w in job.guidance_scales
        for s in scales
    ]


def sweep(
    job: SweepJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """The `iddpm sweep` job: rows of (sampler, schedule, K, scores[, bpd]) written to
    OUT/sweep.csv, plots of FID (and the bound) against K with one line per sampler, and
    the summary as OUT/sweep.json."""
    ctx = JobContext(device, progress, stats=job.stats)
    loaded = load_model(job.checkpoint, device=device)
    out_dir = job.out_dir or run_of(loaded.checkpoint).sweep
    check_writable_dir(out_dir, "--out-dir")
    entries = _plan(job, loaded, ctx)
    extractor = extractor_for(job.features, device)
    ref = reference(job.ref or loaded.config.train.data, "train", extractor, job.batch_size)
    rows = [_row(job, entry, extractor, ref, out_dir) for entry in entries]
    mark_ties(rows)  # every row is drawn with one seed: paired differences to the best
    result: dict[str, Any] = {"rows": rows, "features": extractor.name}
    if runtime.is_main():
        result.update(_write(out_dir, rows, extractor.name))
        write_json(out_dir / "sweep.json", result)
    return result


def _row(job: SweepJob, entry: Entry, extractor, ref, out_dir: Path) -> dict[str, Any]:
    plan = entry.plan
    k = plan.num_steps
    tag = plan.request.sampler + ("" if entry.schedule == "even" else f"-{entry.schedule}")
    tag += guidance_tag(plan.request)
    npz = out_dir / f"samples_{tag}_{k}steps.npz"
    scores = sample_and_score(plan, extractor, ref, save_as=npz, replicates=BOOTSTRAP)
    scores.pop("images")
    row = {
        "sampler": entry.label,
        "schedule": entry.schedule,
        "steps": k,
        "nfe": plan.calls,
        "spec": plan.request.steps,
        "guidance_scale": plan.request.guidance_scale,
        "nfe_budget": entry.budget,
    }
    if plan.request.classifier:
        row["classifier_scale"] = plan.request.classifier_scale
    row.update(scores)
    sigma = plan.entry.bound_sigma
    guided = plan.guidance is not None  # a guided sampler has no bound of its own
    if job.nll_images and sigma is not None and not guided:
        ecfg = EvalConfig(
            steps=plan.request.steps, num_images=job.nll_images, seed=job.seed, sigma=sigma
        )
        row["bpd"] = bits_per_dim_of(plan.loaded, ecfg, plan.ctx).bpd
    return row


def _write(out_dir: Path, rows: list[dict[str, Any]], feature_name: str) -> dict[str, str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    table = [[r.get(k, "") for k in keys] for r in rows]
    paths = {"csv": str(write_csv(out_dir / "sweep.csv", keys, table))}
    steps = sorted({r["steps"] for r in rows})
    paths["fid_plot"] = str(
        plot_metric_vs_steps(
            out_dir / "fid_vs_steps.png",
            steps,
            _by_sampler(rows, steps, "fid"),
            ylabel=feature_name,
            title="sample quality vs sampling steps",
        )
    )
    bpd = {name: v for name, v in _by_sampler(rows, steps, "bpd").items() if any(map(_ok, v))}
    if bpd:
        paths["bpd_plot"] = str(
            plot_metric_vs_steps(
                out_dir / "bpd_vs_steps.png",
                steps,
                bpd,
                ylabel="bits/dim",
                title="bound of the K-step process",
            )
        )
    return paths


def _ok(v: float) -> bool:
    return isinstance(v, float) and math.isfinite(v)


def _by_sampler(rows: list[dict[str, Any]], steps: list[int], key: str) -> dict[str, list]:
    """sampler -> metric at each K of `steps` (NaN where the sweep has no value)."""
    table: dict[str, dict[int, float]] = {}
    for r in rows:
        table.setdefault(r["sampler"], {})[r["steps"]] = r.get(key, math.nan)
    return {name: [vals.get(k, math.nan) for k in steps] for name, vals in table.items()}


def split_options(samplers: tuple[str, ...], options: dict[str, Any]) -> dict[str, dict]:
    """Give each sampler the options it takes (e.g. --eta goes to ddim only); an option
    that none of `samplers` takes is a one-line error."""
    out: dict[str, dict[str, Any]] = {name: {} for name in samplers}
    for key, value in options.items():
        takers = [n for n in samplers if key in {f.name for f in registry.get(n).option_fields()}]
        if not takers:
            raise ValueError(
                f"option --{key.replace('_', '-')} applies to none of the samplers "
                f"{', '.join(samplers)}; drop it or add a sampler that takes it"
            )
        for name in takers:
            out[name][key] = value
    return out
