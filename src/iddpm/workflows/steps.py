"""Bound-optimal step schedules (Watson et al. 2021) for a trained model: the `iddpm steps` job;
with `--for SAMPLER`, the schedules of least one-step error for an ODE sampler
(`diffusion.step_costs`, GITS), cached per (checkpoint, one-step form).

One network call per base step and test image gives the cost of every jump t → s of the
K-step bound (`diffusion.step_schedule.bound_cost_matrix`); dynamic programming then finds
the K kept steps of least bound. The cost matrix is cached in the run directory per
(checkpoint, images, seed, variance, decoder steps), so asking for other K is instant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iddpm._io import write_json
from iddpm._tensor import to_model_range
from iddpm.build import LoadedModel, kept_steps, load_model, spaced
from iddpm.diffusion import registry
from iddpm.diffusion.respace import format_steps, karras_steps
from iddpm.diffusion.samplers import per_sample_generators
from iddpm.diffusion.step_costs import StepCosts, optimal_path, step_costs
from iddpm.diffusion.step_schedule import BoundCosts, bound_cost_matrix, optimal_steps, path_cost
from iddpm.workflows import runtime
from iddpm.workflows.cache import Damaged, checkpoint_digest
from iddpm.workflows.context import MIN_IMAGES, JobContext, StatsConfig
from iddpm.workflows.data import data_for_model
from iddpm.workflows.progress import Progress, running_total, silent
from iddpm.workflows.runs import check_writable_dir, run_of
from iddpm.workflows.statistics import statistics_for

# the reverse variances a jump's cost can use (bound_cost_matrix: the model's, or
# Analytic-DPM's from Γ); a subset of registry.SIGMAS
STEP_SIGMAS = ("model", "analytic")


@dataclass(frozen=True)
class StepsJob:
    """The least-bound K-step schedules of `checkpoint` for every K in `nfe`, from the
    costs on `num_images` images of `data` ("" = the model's data) split `split`. The
    default is the training split: a schedule chosen on the test images would make the
    bound it is then measured with on those images optimistic.

    sigma: the reverse variance of each jump, the model's own or Analytic-DPM's (Γ from
    `stats`); decoder_steps: the decoder may sit at base steps below this (1 forces the
    last kept step to be 0; more lets the schedule stop earlier, at a cost of
    decoder_steps·T·d likelihood evaluations per image)."""

    checkpoint: Path
    nfe: tuple[int, ...] = (25,)
    data: str = ""
    split: str = "train"
    num_images: int = 256
    sigma: str = "model"
    decoder_steps: int = 8
    seed: int = 0
    batch_size: int = 64
    timestep_batch: int = 16
    stats: StatsConfig = field(default_factory=StatsConfig)
    out_dir: Path | None = None


def _check(job: StepsJob, num_t: int) -> None:
    if job.sigma not in STEP_SIGMAS:
        raise ValueError(f"unknown --sigma {job.sigma!r}; choose one of: {', '.join(STEP_SIGMAS)}")
    bad = [k for k in job.nfe if not 1 <= k <= num_t]
    if not job.nfe or bad:
        raise ValueError(f"--nfe {bad or 'nothing'}: each must be in [1, {num_t}] (the model's T)")
    if job.num_images < MIN_IMAGES // 4:
        raise ValueError(
            f"--num-images {job.num_images} is too few for a cost matrix; use at least "
            f"{MIN_IMAGES // 4} (default 256)"
        )
    if not 1 <= job.decoder_steps <= num_t:
        raise ValueError(f"--decoder-steps must be in [1, {num_t}], got {job.decoder_steps}")


def _meta(job: StepsJob, loaded: LoadedModel) -> dict[str, Any]:
    return {
        "checkpoint_sha256": checkpoint_digest(loaded.checkpoint),
        "ema": loaded.use_ema,
        "data": job.data or loaded.config.train.data,
        "split": job.split,
        "num_images": job.num_images,
        "seed": job.seed,
        "sigma": job.sigma,
        "decoder_steps": job.decoder_steps,
        "stats": [job.stats.data, job.stats.num_images, job.stats.seed]
        if registry.SIGMAS[job.sigma].statistics
        else None,
    }


def _costs_check(num_t: int):
    """A stored cost matrix is sound: the shapes `bound_cost_matrix` returns for T steps."""

    def check(values: Any) -> BoundCosts:
        shapes = {"kl": (num_t, num_t), "decoder": (num_t, num_t), "prior": (num_t,)}
        tables = {k: values[k] for k in shapes}
        ok = all(
            isinstance(v, torch.Tensor) and tuple(v.shape) == shapes[k] and not v.isnan().any()
            for k, v in tables.items()
        )
        if not ok:
            raise Damaged("cost tables of the wrong shape")
        return BoundCosts(**tables, num_images=int(values["num_images"]))

    return check


def cost_matrix(job: StepsJob, loaded: LoadedModel, ctx: JobContext) -> BoundCosts:
    """The costs of every jump of the model's base process (cached in the run)."""
    diffusion, model_fn = spaced(loaded.model, loaded.config.diffusion, "")

    def compute() -> dict[str, Any]:
        needs = registry.SIGMAS[job.sigma].statistics
        stats = statistics_for(loaded, needs, diffusion, model_fn, ctx.replace(stats=job.stats))
        ds = data_for_model(loaded.config, job.data or None, job.split, job.num_images)
        device = ctx.device
        kwargs = {} if ds.labels is None else {"y": torch.as_tensor(ds.labels, device=device)}
        with ctx.progress(f"step costs on {len(ds)} images", len(ds), "img") as bar:
            costs = bound_cost_matrix(
                model_fn,
                diffusion,
                to_model_range(ds.images).to(device),
                seed=job.seed,
                batch_size=job.batch_size,
                timestep_batch=job.timestep_batch,
                eps_moments=stats.get("gamma"),
                decoder_steps=job.decoder_steps,
                model_kwargs=kwargs,
                progress=running_total(bar),  # it reports images done so far
            )
        return {"kl": costs.kl, "decoder": costs.decoder, "prior": costs.prior,
                "num_images": costs.num_images}  # fmt: skip

    check = _costs_check(diffusion.num_timesteps)
    return ctx.cache(loaded.checkpoint).tensors("step_costs", _meta(job, loaded), compute, check)


def schedules(job: StepsJob, loaded: LoadedModel, ctx: JobContext) -> list[dict[str, Any]]:
    """For each K: the least-bound spec and its bound, beside the even spacing's bound."""
    _check(job, loaded.config.diffusion.num_timesteps)
    costs = cost_matrix(job, loaded, ctx)
    rows = []
    for k in job.nfe:
        steps, bound = optimal_steps(costs, k)
        even = kept_steps(loaded.config.diffusion, str(k))
        rows.append(
            {
                "nfe": k,
                "spec": format_steps(steps),
                "bound_bpd": bound,
                "even_bound_bpd": path_cost(costs, even),
                "num_images": int(costs.num_images),
            }
        )
    return rows


def optimal_schedules(
    job: StepsJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """The `iddpm steps` job; the summary is also written as OUT_DIR/steps_<sigma>.json."""
    loaded = load_model(job.checkpoint, device=device)
    out_dir = job.out_dir or run_of(loaded.checkpoint).eval
    check_writable_dir(out_dir, "--out-dir")
    start = time.perf_counter()
    rows = schedules(job, loaded, JobContext(device, progress, stats=job.stats))
    result = {
        "schedules": rows,
        "sigma": job.sigma,
        "num_images": rows[0]["num_images"],  # what the split holds, at most job.num_images
        "split": job.split,
        "seconds": round(time.perf_counter() - start, 3),
        "checkpoint": str(loaded.checkpoint),
    }
    if runtime.is_main():
        write_json(out_dir / f"steps_{job.sigma}.json", result)
    return result


# ---------------------------------------------------------------------- sampler-optimal
@dataclass(frozen=True)
class SamplerStepsJob:
    """The K-step schedules of least one-step error for sampler `sampler` (an ODE solver of
    the registry) of `checkpoint`, for every network-call budget in `nfe`
    (`diffusion.step_costs`): costs on `num_images` starting points x_T of `seed` against a
    fine UniPC trajectory over `candidates` Karras-spaced base steps (σ from 0.03 to the
    spacings' σ_max), refined `refine` times; cached per (checkpoint, one-step form,
    candidates, images, seed)."""

    checkpoint: Path
    sampler: str
    nfe: tuple[int, ...] = (10,)
    num_images: int = 128
    candidates: int = 80
    refine: int = 2
    seed: int = 0
    out_dir: Path | None = None


def _sampler_entry(job: SamplerStepsJob, num_t: int) -> registry.SamplerEntry:
    entry = registry.get(job.sampler)
    if not entry.ode:
        odes = ", ".join(n for n in registry.names() if registry.get(n).ode)
        raise ValueError(
            f"--for {job.sampler}: the sampler has no probability-flow ODE form to follow; "
            f"choose one of: {odes}"
        )
    bad = [k for k in job.nfe if not entry.calls(1) <= k <= entry.calls(job.candidates)]
    if not job.nfe or bad:
        raise ValueError(
            f"--nfe {bad or 'nothing'}: {job.sampler} needs between {entry.calls(1)} and "
            f"{entry.calls(job.candidates)} network calls here"
        )
    if job.num_images < 8 or not 2 <= job.candidates <= num_t or job.refine < 1:
        raise ValueError(
            "--num-images must be >= 8, --candidates in [2, T] and --refine >= 1; "
            f"got {job.num_images}, {job.candidates}, {job.refine}"
        )
    return entry


def _one_step_form(entry: registry.SamplerEntry) -> str:
    """The one-step form of the cost: Heun's trapezoid for a two-call-per-step solver,
    else the first-order step that GITS uses for every multistep solver."""
    return "trapezoid" if entry.calls(2) > 2 else "euler"


def sampler_costs(job: SamplerStepsJob, loaded: LoadedModel, ctx: JobContext) -> StepCosts:
    """The one-step cost matrix of the job's sampler (cached in the run)."""
    entry = _sampler_entry(job, loaded.config.diffusion.num_timesteps)
    diffusion, model_fn = spaced(loaded.model, loaded.config.diffusion, "")
    candidates = karras_steps(job.candidates, diffusion.alphas_cumprod, sigma_min=0.03)
    form = _one_step_form(entry)
    meta = {
        "checkpoint_sha256": checkpoint_digest(loaded.checkpoint),
        "ema": loaded.use_ema,
        "form": form,
        "candidates": candidates,
        "num_images": job.num_images,
        "seed": job.seed,
        "refine": job.refine,
    }
    mcfg = loaded.config.model
    shape = (mcfg.in_channels, mcfg.image_size, mcfg.image_size)

    def compute() -> dict[str, Any]:
        gens = per_sample_generators(job.seed, range(job.num_images))
        x_T = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(ctx.device)
        with ctx.progress(f"one-step costs ({form})", len(candidates), "step") as bar:
            costs = step_costs(model_fn, diffusion, candidates, x_T, form, job.refine,
                               progress=running_total(bar))  # fmt: skip
        return {"steps": torch.tensor(costs.steps), "local": costs.local, "final": costs.final}

    def check(values: Any) -> StepCosts:
        try:
            costs = StepCosts(values["steps"].tolist(), values["local"], values["final"])
            costs.check()
        except (ValueError, KeyError, AttributeError, TypeError):
            raise Damaged("sampler step costs do not fit together") from None
        if costs.steps != candidates:
            raise Damaged("sampler step costs of other candidates")
        return costs

    return ctx.cache(loaded.checkpoint).tensors("sampler_step_costs", meta, compute, check)


def sampler_schedules(
    job: SamplerStepsJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """`iddpm steps RUN --for SAMPLER`: for each budget, the least-error spec (also written
    as OUT_DIR/steps_for_<sampler>.json)."""
    loaded = load_model(job.checkpoint, device=device)
    _sampler_entry(job, loaded.config.diffusion.num_timesteps)
    out_dir = job.out_dir or run_of(loaded.checkpoint).eval
    check_writable_dir(out_dir, "--out-dir")
    start = time.perf_counter()
    entry = registry.get(job.sampler)
    costs = sampler_costs(job, loaded, JobContext(device, progress))
    rows = []
    for nfe in job.nfe:
        k = max(k for k in range(1, job.candidates + 1) if entry.calls(k) <= nfe)
        path, error = optimal_path(costs, k)
        steps = [costs.steps[i] for i in path]
        rows.append({"nfe": entry.calls(k), "steps": k, "spec": format_steps(steps),
                     "one_step_error": error})  # fmt: skip
    result = {
        "sampler": job.sampler,
        "form": _one_step_form(entry),
        "schedules": rows,
        "num_images": job.num_images,
        "seconds": round(time.perf_counter() - start, 3),
        "checkpoint": str(loaded.checkpoint),
    }
    if runtime.is_main():
        write_json(out_dir / f"steps_for_{job.sampler}.json", result)
    return result
