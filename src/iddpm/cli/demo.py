"""`iddpm demo`: the whole paper on the bundled digits, end to end, on a laptop CPU."""

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
from iddpm.workflows.demo import DemoJob, run_demo
from iddpm.workflows.runs import fresh_run_dir


@click.command()
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="where everything goes (default: runs/demo, or runs/demo-2, … if taken)",
)
@click.option(
    "--preset",
    type=click.Choice(["digits", "digits-cond"]),
    default="digits",
    show_default=True,
    help="digits-cond: class-conditional with class dropout, plus a guidance section",
)
@click.option("--minutes", type=float, default=4.0, show_default=True, help="training time budget")
@click.option("--max-steps", type=int, default=100_000, show_default=True, help="training step cap")
@click.option(
    "--num-samples", type=int, default=256, show_default=True, help="samples per sample set"
)
@click.option(
    "--sample-steps", default="50", show_default=True, help="step spec of the few-step sample set"
)
@sampler_choice()
@sampler_options
@click.option("--nll-images", type=int, default=0, show_default=True, help="test images (0: all)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--diffusion-steps",
    type=int,
    default=None,
    hidden=True,
    help="override T (for quick checks; the demo's model uses 1000)",
)
@stats_options
@job_command
def demo(run_dir: Path | None, device: Any, progress: Any, **values: Any) -> dict[str, Any]:
    """Train on the bundled digits, sample in 50 steps and the full chain, measure
    bits/dim and digits-FID, and write RUN_DIR/report.md."""
    run = run_dir if run_dir is not None else fresh_run_dir(Path("runs/demo"))
    options, stats = pop_sampler_options(values), pop_stats_config(values, values["seed"])
    job = DemoJob(run_dir=run, sampler_options=options, stats=stats, **values)
    return run_demo(job, device, progress)
