"""`python -m experiments.ablate`: the paper's Tables 1–2 ablations on the bundled digits.

Trains every unit of the plan (see `plan.default_plan`) with one budget, evaluates
bits/dim, digits-FID against the number of sampling steps and loss-curve smoothness, and
writes the report with verdicts per claim. Finished units are cached in --out. Run it
from the repository root; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import click

from experiments.ablate.plan import OBJECTIVES, Settings, default_plan
from experiments.ablate.report import make_report, run_meta
from experiments.ablate.run import Outcome, run_plan
from experiments.ablate.template import Templates

PROGRAM = "python -m experiments.ablate"


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.pass_context
def ablate(
    context: click.Context,
    out: Path,
    report: Path,
    steps: int,
    seeds: str,
    linear_seeds: str,
    timesteps: int,
    long_timesteps: int,
    long_objectives: str,
    nll_images: int,
    fid_samples: int,
    sample_steps: str,
    full_chain_max_t: int,
    jobs: int,
    threads: int,
    niceness: int,
    max_minutes: float,
    report_only: bool,
) -> None:
    """Train the paper's ablation arms on the digits, evaluate them and write the report."""
    long_names = tuple(name for name in long_objectives.split(",") if name)
    unknown = [name for name in long_names if name not in OBJECTIVES]
    if unknown:
        raise click.BadParameter(f"unknown objective(s) {unknown}; choose from {list(OBJECTIVES)}")
    cosine_seeds, linear = _ints(seeds), _ints(linear_seeds)
    if not cosine_seeds:
        raise click.BadParameter("--seeds needs at least one seed, e.g. --seeds 0")
    plan = default_plan(cosine_seeds, linear, timesteps, long_timesteps, long_names)
    settings = Settings(
        train_steps=steps,
        nll_images=nll_images,
        fid_samples=fid_samples,
        sample_steps=_ints(sample_steps),
        full_chain_max_t=full_chain_max_t,
        nll_batch=min(100, nll_images),
    )
    outcome = Outcome()
    if not report_only:
        log = lambda message: click.echo(message, err=True)  # noqa: E731
        limit = max_minutes or None
        outcome = run_plan(plan, settings, out, jobs, threads, niceness, limit, log=log)
    templates = Templates.load()
    argv = (context.obj or {}).get("argv", [])
    shown = [arg for arg in argv if arg != "--report-only"]
    command = f"{PROGRAM} {shlex.join(shown)}" if shown else PROGRAM
    meta = run_meta(
        templates,
        command,
        outcome.wall_s,
        jobs,
        threads,
        cosine_seeds,
        linear,
        long_timesteps,
        os.cpu_count(),
    )
    result = make_report(out, plan, settings, report, meta, templates)
    click.echo(json.dumps({**result, "wall_s": round(outcome.wall_s, 1)}))


def main(argv: list[str] | None = None) -> None:
    """Run the command on `argv` (default: this process's arguments); the report records
    them as the command that regenerates it."""
    argv = sys.argv[1:] if argv is None else argv
    ablate.main(args=argv, prog_name=PROGRAM, obj={"argv": argv})


if __name__ == "__main__":
    main()
