"""`iddpm steps`: the K-step schedule with the tightest bound (Watson et al. 2021)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from iddpm.cli._command import job_command
from iddpm.cli.options import pop_stats_config, stats_options
from iddpm.config import SPLITS
from iddpm.workflows.steps import (
    STEP_SIGMAS,
    SamplerStepsJob,
    StepsJob,
    optimal_schedules,
    sampler_schedules,
)


def _counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated step counts, got {text!r}") from None


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--nfe",
    default="25",
    show_default=True,
    help="number(s) of steps K = network calls, comma-separated",
)
@click.option("--data", default="", help="data SPEC of the images (default: the model's data)")
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default="train",
    show_default=True,
    help="images the costs are measured on (choose on train, report the bound on test)",
)
@click.option(
    "--num-images",
    type=int,
    default=256,
    show_default=True,
    help="images the costs are averaged over",
)
@click.option(
    "--sigma",
    type=click.Choice(STEP_SIGMAS),
    default="model",
    show_default=True,
    help="reverse variance of each jump: the model's own or Analytic-DPM's",
)
@click.option(
    "--decoder-steps",
    type=int,
    default=8,
    show_default=True,
    help="the schedule's last step may be any base step below this",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--timestep-batch", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="output folder")
@click.option(
    "--for",
    "for_sampler",
    default="",
    help="an ODE sampler (e.g. ipndm, unipc, heun): the schedule of least one-step error "
    "against a fine ODE trajectory from --num-images noise seeds, for --nfe network calls",
)
@click.option(
    "--candidates",
    type=click.IntRange(min=2),
    default=80,
    show_default=True,
    help="with --for: Karras-spaced base steps the schedule is chosen from",
)
@stats_options
@job_command
def steps(
    checkpoint: Path,
    nfe: str,
    device: Any,
    progress: Any,
    for_sampler: str,
    candidates: int,
    **values: Any,
) -> dict[str, Any]:
    """Print the K-step schedule of least bound for CHECKPOINT (a spec that `--steps`
    accepts, e.g. "at:0,3,11,…") and the bound it achieves on the cost images, beside the
    even spacing's; `iddpm nll --split test --steps SPEC` measures it on test images.
    With --for SAMPLER: the schedule of least one-step error for that ODE sampler."""
    if for_sampler:
        job = SamplerStepsJob(checkpoint, for_sampler, nfe=_counts(nfe),
                              num_images=values["num_images"], candidates=candidates,
                              seed=values["seed"], out_dir=values["out_dir"])  # fmt: skip
        result = sampler_schedules(job, device, progress)
        for row in result["schedules"]:
            click.echo(f"{for_sampler} at {row['nfe']} calls: {row['spec']}", err=True)
        return result
    stats = pop_stats_config(values, seed=values["seed"])
    job = StepsJob(checkpoint, nfe=_counts(nfe), stats=stats, **values)
    result = optimal_schedules(job, device, progress)
    for row in result["schedules"]:
        click.echo(
            f"K={row['nfe']}: {row['spec']}  bound {row['bound_bpd']:.4f} bits/dim "
            f"(even spacing {row['even_bound_bpd']:.4f}) on {row['num_images']} {job.split} images",
            err=True,
        )
    return result
