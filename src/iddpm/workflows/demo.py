"""The demo: the whole paper on the bundled digits, end to end, on a laptop CPU.

Trains the digits preset (cosine schedule, learned-range variance, L_hybrid) for a time
budget, samples with a few strided steps and with the full chain, measures the exact
bits/dim of the test split, the offline digits-FID of both sample sets and a classifier's
confidence, and writes RUN_DIR/report.md (`demo_report.py`) with the figures and the
commands that reproduce them. With `--preset digits-cond` (class dropout) it also samples
at several classifier-free guidance scales and shows a grid with one row per class.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iddpm._io import write_json
from iddpm.build import kept_steps, load_model
from iddpm.checkpoint import run_dir
from iddpm.config import EvalConfig, ExperimentConfig, SampleConfig
from iddpm.diffusion import registry
from iddpm.presets import get_preset
from iddpm.workflows.context import JobContext, StatsConfig
from iddpm.workflows.demo_report import write_demo_report
from iddpm.workflows.guidance import class_rows
from iddpm.workflows.monitor import drop_unsupported_defaults
from iddpm.workflows.nll import bits_per_dim_of
from iddpm.workflows.plan import SamplingPlan
from iddpm.workflows.plots import save_image_grid
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.quality import extractor_for, reference, sample_and_score
from iddpm.workflows.run_report import ReportJob, run_report
from iddpm.workflows.runs import check_new_run
from iddpm.workflows.sweep import SweepJob, sweep
from iddpm.workflows.train import TrainJob, train

RESULT_FILE = "demo_result.json"
AUDIT_IMAGES = 200  # training images of the report's learned-Σ audit (its network calls)
LEADERBOARD_SAMPLERS = ("ancestral", "ddim", "dpmpp2m", "dpmpp2m-sde", "analytic", "unipc",
                        "ipndm", "heun")  # fmt: skip


@dataclass(frozen=True)
class DemoJob:
    """The demo's knobs. `sample_steps` with `sampler` is the few-step set; the second
    set is always the full chain with the paper's (ancestral) sampler."""

    run_dir: Path
    minutes: float = 4.0
    max_steps: int = 100_000
    num_samples: int = 256
    sample_steps: str = "50"
    sampler: str = "ancestral"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    nll_images: int = 0
    seed: int = 0
    diffusion_steps: int | None = None
    leaderboard_samplers: tuple[str, ...] = LEADERBOARD_SAMPLERS
    leaderboard_nfe: tuple[int, ...] = (5, 10, 20)
    stats: StatsConfig = field(default_factory=StatsConfig)
    preset: str = "digits"


def demo_config(job: DemoJob) -> ExperimentConfig:
    """The digits preset (or `job.preset`, e.g. digits-cond) with the demo's step cap,
    seed and logging; its periodic evaluation and a grid every 1,000 steps feed the
    training report (what a smaller --diffusion-steps cannot have is dropped, as for
    `iddpm train`)."""
    base = get_preset(job.preset)
    if base.train.data != "digits":
        raise ValueError(
            f"--preset {job.preset} does not train on the bundled digits; the demo runs "
            "digits or digits-cond (class-conditional, with guidance)"
        )
    train_cfg = base.train.replace(
        steps=job.max_steps, seed=job.seed, sample_every=1000, log_every=20
    )
    diffusion = base.diffusion.replace(
        num_timesteps=job.diffusion_steps or base.diffusion.num_timesteps
    )
    return drop_unsupported_defaults(base.replace(train=train_cfg, diffusion=diffusion), set())


def check_demo(job: DemoJob, cfg: ExperimentConfig) -> None:
    """Every option of the demo, before it trains (so a bad one costs no minutes)."""
    if not (math.isfinite(job.minutes) and job.minutes > 0):
        raise ValueError(f"--minutes must be a positive number of minutes, got {job.minutes}")
    for flag, value in (("--max-steps", job.max_steps), ("--num-samples", job.num_samples)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if job.nll_images < 0:
        raise ValueError(f"--nll-images must be >= 0 (0: all test images), got {job.nll_images}")
    kept_steps(cfg.diffusion, job.sample_steps)
    registry.make_options(job.sampler, job.sampler_options)
    for name in job.leaderboard_samplers:
        registry.get(name)
    for k in job.leaderboard_nfe:
        kept_steps(cfg.diffusion, str(k))
    check_new_run(
        job.run_dir, hint="choose another --run-dir, or leave it out to get a free folder"
    )


def set_label(plan: SamplingPlan) -> str:
    """The headline key of a sample set: "50steps" for the paper's sampler, else
    "<sampler>_50steps"."""
    name = plan.request.sampler
    prefix = "" if name == registry.DEFAULT else f"{name}_"
    return f"{prefix}{plan.spec}steps"


def run_demo(
    job: DemoJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """Train, sample, evaluate and report; returns the headline numbers (also written to
    RUN_DIR/demo_result.json)."""
    cfg = demo_config(job)
    check_demo(job, cfg)
    t0 = time.perf_counter()
    trained = train(TrainJob(cfg, job.run_dir, max_minutes=job.minutes), device, progress)
    ctx = JobContext(device, progress, stats=job.stats)
    loaded = load_model(job.run_dir, device=device)
    extractor = extractor_for("digits", device)
    ref = reference("digits", "train", extractor)
    sets = []
    for steps, sampler, options in (
        (job.sample_steps, job.sampler, job.sampler_options),
        ("", registry.DEFAULT, {}),
    ):
        request = SampleConfig(
            num=job.num_samples,
            steps=steps,
            sampler=sampler,
            sampler_options=options,
            batch_size=256,
            seed=job.seed,
        )
        plan = SamplingPlan(loaded, request, ctx)
        npz = run_dir(job.run_dir).samples / f"demo_{sampler}_{plan.spec}steps.npz"
        row = sample_and_score(plan, extractor, ref, save_as=npz)
        row.pop("_replicates", None)
        sets.append({**row, "steps": plan.spec, "sampler": sampler, "label": set_label(plan)})
    ecfg = EvalConfig(
        data="digits",
        split="test",
        num_images=job.nll_images,
        batch_size=128,
        timestep_batch=10,
        seed=job.seed,
    )
    start = time.perf_counter()
    nll = bits_per_dim_of(loaded, ecfg, ctx, "exact bits/dim, test split")
    nll_seconds = time.perf_counter() - start
    headline = {
        "run_dir": str(job.run_dir),
        "train_steps": trained["step"],
        "train_seconds": round(trained["wall_s"], 1),
        "bpd": nll.bpd,
        "bpd_stderr": nll.stderr,
        "nll_images": len(nll.total_bpd),
        "nll_seconds": round(nll_seconds, 1),
    }
    for s in sets:
        key = s["label"]
        headline[f"fid_{key}"] = s["fid"]
        headline[f"confident_fraction_{key}"] = s["confident_fraction"]
        headline[f"sample_seconds_{key}"] = round(s["sample_seconds"], 1)
    cond = conditional_section(job, loaded, ctx, extractor, ref)
    for row in cond.get("rows", []):
        headline[f"fid_w{row['guidance_scale']:g}"] = row["fid"]
        headline[f"class_accuracy_w{row['guidance_scale']:g}"] = row["class_accuracy"]
    board = _leaderboard(job, device, progress)
    headline["leaderboard_fid"] = {
        f"{r['sampler']}_{r.get('nfe_budget') or r['steps']}": r["fid"]
        for r in board.get("rows", [])
    }
    stats = dataclasses.replace(job.stats, num_images=min(job.stats.num_images, AUDIT_IMAGES))
    training = None  # a run shorter than one logging interval has no curves to report
    if run_dir(job.run_dir).metrics_path.is_file():
        training = run_report(ReportJob(job.run_dir, stats=stats), device, progress)
    headline["training_report"] = training["report"] if training else None
    headline["report"] = str(
        write_demo_report(job, cfg, trained, sets, nll, headline, board, training, cond=cond)
    )
    headline["wall_seconds"] = round(time.perf_counter() - t0, 1)
    write_json(job.run_dir / RESULT_FILE, headline)
    return headline


DEMO_GUIDANCE_SCALES = (0.0, 1.0, 3.0)
GRID_SCALE = 3.0


def conditional_section(
    job: DemoJob, loaded: Any, ctx: JobContext, extractor: Any, ref: Any
) -> dict[str, Any]:
    """For a model trained with class dropout: the few-step set at guidance scales
    DEMO_GUIDANCE_SCALES (class-balanced samples, scored with the share labelled as the
    class asked for) and a grid of 10 samples per class, one row each, at GRID_SCALE."""
    if not loaded.config.model.null_class:
        return {}
    base = SampleConfig(
        num=job.num_samples,
        steps=job.sample_steps,
        sampler=job.sampler,
        sampler_options=job.sampler_options,
        batch_size=256,
        seed=job.seed,
    )
    samples_dir = run_dir(job.run_dir).samples
    rows = []
    for w in DEMO_GUIDANCE_SCALES:
        plan = SamplingPlan(loaded, base.replace(guidance_scale=w), ctx)
        row = sample_and_score(plan, extractor, ref, save_as=samples_dir / f"demo_{plan.tag()}.npz")
        row.pop("images")
        rows.append(row)
    plan = SamplingPlan(loaded, base.replace(num=100, guidance_scale=GRID_SCALE), ctx)
    grid = plan.draw(range(100))
    path = save_image_grid(
        samples_dir / f"demo_class_grid_{plan.tag()}.png",
        class_rows(grid.images, grid.labels),
        nrow=10,
    )
    return {"rows": rows, "grid": str(path), "grid_scale": GRID_SCALE}


def _leaderboard(job: DemoJob, device: torch.device | str, progress: Progress) -> dict[str, Any]:
    """Sample quality per network call: each leaderboard sampler at each NFE."""
    if not job.leaderboard_samplers or not job.leaderboard_nfe:
        return {}
    board = SweepJob(
        job.run_dir,
        samplers=job.leaderboard_samplers,
        steps=tuple(str(k) for k in job.leaderboard_nfe),
        spacing="best",  # each sampler on its own measured best spacing (registry)
        nfe=True,  # counts are network calls (Heun: 2K - 1)
        num=job.num_samples,
        seed=job.seed,
        stats=job.stats,
        out_dir=run_dir(job.run_dir).leaderboard,
    )
    return sweep(board, device, progress)
