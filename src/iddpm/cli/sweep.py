"""`iddpm sweep`: sample quality (and the bound) against samplers and numbers of steps K."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from iddpm.cli._command import job_command
from iddpm.cli.options import (
    pop_sampler_options,
    pop_stats_config,
    sampler_choice,
    sampler_options,
    stats_options,
)
from iddpm.workflows.quality import FEATURES
from iddpm.workflows.sweep import SPACINGS, SweepJob, split_options
from iddpm.workflows.sweep import sweep as sweep_job

DEFAULT_STEPS = ("25", "50", "100", "250", "full")


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--steps",
    "step_specs",
    multiple=True,
    default=DEFAULT_STEPS,
    show_default=True,
    help="step specs K to compare (repeat the option); 'full' = all T",
)
@click.option(
    "--nfe",
    default=None,
    help="comma list of network-call budgets, e.g. 5,10,20,50 (replaces --steps)",
)
@click.option(
    "--spacing",
    type=click.Choice(["even", *SPACINGS[1:]]),
    default="even",
    show_default=True,
    help="how plain step counts are spaced (see `iddpm sample --help`); best: each "
    "sampler's own measured best (registry)",
)
@sampler_choice(multiple=True)
@sampler_options
@click.option(
    "--num",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="samples per (sampler, K)",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--ref",
    default=None,
    help="FID reference: data SPEC or stats .npz (default: the training data)",
)
@click.option(
    "--features",
    type=click.Choice(FEATURES),
    default="digits",
    show_default=True,
    help="feature extractor for FID",
)
@click.option(
    "--nll-images",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="also the bound of each K-step process on this many test images (0: skip)",
)
@click.option(
    "--optimal-steps",
    is_flag=True,
    help="also the ancestral sampler on the bound-optimal schedule of each K",
)
@click.option(
    "--steps-images",
    type=int,
    default=256,
    show_default=True,
    help="training images the bound-optimal schedules are computed on",
)
@click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="output folder")
@stats_options
@job_command
def sweep(
    checkpoint: Path,
    step_specs: tuple[str, ...],
    nfe: str | None,
    samplers: str,
    spacing: str,
    device: Any,
    progress: Any,
    **values: Any,
) -> dict[str, Any]:
    """A leaderboard of CHECKPOINT: FID, precision/recall and (with --nll-images) the
    K-step bound for every sampler and number of steps K (= network calls), as CSV and
    plots with one line per sampler. Last line is JSON.

    \b
    iddpm sweep RUN --samplers ancestral,ddim,dpmpp2m,analytic --nfe 5,10,20,50 \\
      --nll-images 200 --optimal-steps
    """
    names = tuple(s.strip() for s in samplers.split(",") if s.strip())
    if not names:
        raise ValueError(
            f"--samplers {samplers!r} names no sampler; give a comma list, e.g. --samplers "
            "ancestral,ddim (`iddpm sweep --help` lists the registered ones)"
        )
    specs = step_specs if nfe is None else tuple(s.strip() for s in nfe.split(",") if s.strip())
    if not specs:
        raise ValueError(f"--nfe {nfe!r} names no budget; give a comma list, e.g. --nfe 5,10,20")
    options = split_options(names, pop_sampler_options(values))
    stats = pop_stats_config(values, seed=values["seed"])
    job = SweepJob(checkpoint, samplers=names, steps=specs, sampler_options=options,
                   spacing="" if spacing == "even" else spacing, nfe=nfe is not None,
                   stats=stats, **values)  # fmt: skip
    return sweep_job(job, device, progress)
