"""`iddpm compare A B`: a paired difference with its interval and a plain verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from iddpm.cli._command import job_command
from iddpm.workflows.compare import BOOTSTRAP, CompareJob
from iddpm.workflows.compare import compare as compare_job
from iddpm.workflows.quality import FEATURES


@click.command()
@click.argument("a")
@click.argument("b")
@click.option("--ref", default=None, help="reference of sample sets: data SPEC or statistics")
@click.option(
    "--ref-split", type=click.Choice(["train", "test"]), default="train", show_default=True
)
@click.option("--features", type=click.Choice(FEATURES), default="digits", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--bootstrap",
    type=int,
    default=BOOTSTRAP,
    show_default=True,
    help="bootstrap replicates of the paired interval",
)
@click.option("--level", type=float, default=0.95, show_default=True, help="interval level")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="summary JSON (default: A-stem_vs_B-stem.compare.json beside A)",
)
@job_command
def compare(device: Any, progress: Any, **fields: Any) -> dict[str, Any]:
    """Compare A and B: two sample sets drawn with the same seed (every metric against
    --ref), or two per-image bits/dim files of `iddpm nll` on the same images and noise.
    Reports A - B with a paired interval and a verdict (last line is JSON)."""
    return compare_job(CompareJob(**fields), device, progress)
