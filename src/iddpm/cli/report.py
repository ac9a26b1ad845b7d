"""`iddpm report RUN`: the run's curves, samples and learned-Σ audit as a Markdown page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from iddpm.cli._command import job_command
from iddpm.workflows.run_report import ReportJob, run_report
from iddpm.workflows.statistics import StatsConfig


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--audit/--no-audit",
    default=True,
    show_default=True,
    help="the learned-Σ audit on the latest checkpoint (network calls: 50 steps × images)",
)
@click.option(
    "--stats-images",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="training images of the audit (its Γ statistics are cached in the run)",
)
@job_command
def report(
    run_dir: Path, audit: bool, stats_images: int, device: Any, progress: Any
) -> dict[str, Any]:
    """Write RUN/report/report.md with its PNGs: loss curves, held-out vs training
    bits/dim, FID over training, the importance sampler's p_t, sample grids over time,
    the bound's terms and the learned-Σ audit. Offline; reads what training logged."""
    job = ReportJob(run_dir, audit, StatsConfig(num_images=stats_images))
    return run_report(job, device, progress)
