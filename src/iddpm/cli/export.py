"""`iddpm export SAMPLES OUT`: one PNG per sample, named by index (and label)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from iddpm.cli._command import job_command
from iddpm.workflows.export import export_pngs


@click.command()
@click.argument("samples")
@click.argument("out", type=click.Path(path_type=Path))
@job_command
def export(samples: str, out: Path, device: Any, progress: Any) -> dict[str, Any]:
    """Write every image of SAMPLES (an .npz such as `iddpm sample` or the reference code
    writes, a sample job folder, a data SPEC) as OUT/000000.png, … (000000_label3.png
    when the set has labels). OUT must not exist or be empty; it appears complete or not
    at all."""
    return export_pngs(samples, out, device, progress)
