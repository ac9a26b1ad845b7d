"""`iddpm ablate`: the paper's Tables 1–2 ablations on the bundled digits, with a report.

Trains every unit of the plan (see `iddpm.ablate.default_plan`) with one budget, evaluates
bits/dim, digits-FID against the number of sampling steps and loss-curve smoothness, and
writes the report with verdicts per claim. Finished units are cached in --out.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

import click

from iddpm import ablate as ab
from iddpm.cli._common import emit


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@click.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/ablate"),
    show_default=True,
    help="cache folder for runs and per-unit results",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    default=Path("docs/reproduction.md"),
    show_default=True,
    help="Markdown report (figures go to its sibling folder)",
)
@click.option("--steps", default=1500, show_default=True, help="training steps per unit")
@click.option("--seeds", default="0,1", show_default=True, help="seeds of the cosine arms")
@click.option("--linear-seeds", default="0", show_default=True, help="seeds of the linear arms")
@click.option("--timesteps", default=1000, show_default=True, help="T of the main arms")
@click.option("--long-timesteps", default=4000, show_default=True, help="T of the long arms")
@click.option(
    "--long-objectives",
    default="hybrid,vlb-importance",
    show_default=True,
    help="objectives also trained at --long-timesteps (cosine, first seed)",
)
@click.option("--nll-images", default=100, show_default=True, help="test digits for bits/dim")
@click.option("--fid-samples", default=192, show_default=True, help="samples per (arm, K)")
@click.option(
    "--sample-steps",
    default="25,50,100,250",
    show_default=True,
    help="strided K values (the full chain is added for T <= --full-chain-max-t)",
)
@click.option("--full-chain-max-t", default=1000, show_default=True)
@click.option("--jobs", default=2, show_default=True, help="worker processes")
@click.option("--threads", default=1, show_default=True, help="torch threads per worker")
@click.option("--nice", "niceness", default=10, show_default=True, help="workers' niceness")
@click.option(
    "--max-minutes",
    default=0.0,
    show_default=True,
    help="start no unit after this many minutes (0: no limit)",
)
@click.option(
    "--report-only",
    is_flag=True,
    help="only rewrite the report from the cached units (computes nothing)",
)
def ablate(
    out,
    report,
    steps,
    seeds,
    linear_seeds,
    timesteps,
    long_timesteps,
    long_objectives,
    nll_images,
    fid_samples,
    sample_steps,
    full_chain_max_t,
    jobs,
    threads,
    niceness,
    max_minutes,
    report_only,
) -> None:
    """Train the paper's ablation arms on the digits, evaluate them and write the report."""
    longs = tuple(o for o in long_objectives.split(",") if o)
    bad = [o for o in longs if o not in ab.OBJECTIVES]
    if bad:
        raise click.BadParameter(f"unknown objective(s) {bad}; choose from {list(ab.OBJECTIVES)}")
    seed_list, lin = _ints(seeds), _ints(linear_seeds)
    if not seed_list:
        raise click.BadParameter("--seeds needs at least one seed, e.g. --seeds 0")
    plan = ab.default_plan(seed_list, lin, timesteps, long_timesteps, longs)
    settings = ab.Settings(
        train_steps=steps,
        nll_images=nll_images,
        fid_samples=fid_samples,
        sample_steps=_ints(sample_steps),
        full_chain_max_t=full_chain_max_t,
        nll_batch=min(100, nll_images),
    )
    if report_only:
        outcome = ab.Outcome()
    else:
        outcome = ab.run_plan(
            plan,
            settings,
            out,
            jobs,
            threads,
            niceness,
            max_minutes or None,
            log=lambda m: click.echo(m, err=True),
        )
    meta = {
        "command": "iddpm " + shlex.join(a for a in sys.argv[1:] if a != "--report-only")
        if sys.argv[1:2] == ["ablate"]
        else "iddpm ablate",
        "wall_s": outcome.wall_s,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores (shared)",
        "jobs": jobs,
        "threads": threads,
        "seeds_text": f"cosine arms {list(seed_list)}, linear arms {list(lin)}, "
        f"T={long_timesteps} arms {list(seed_list[:1])}",
    }
    result = ab.make_report(out, plan, settings, report, meta)
    emit({**result, "wall_s": round(outcome.wall_s, 1)})
