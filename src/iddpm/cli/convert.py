"""`iddpm convert`: turn a checkpoint of openai/improved-diffusion into an iddpm run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from iddpm.cli._command import emit
from iddpm.config import SCHEDULES
from iddpm.workflows.convert import ConvertJob
from iddpm.workflows.convert import convert as convert_job


@click.command()
@click.argument("reference", type=click.Path(path_type=Path))
@click.option(
    "--image-size",
    type=click.IntRange(min=1),
    required=True,
    help="resolution the model was trained at",
)
@click.option(
    "--num-heads",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="attention heads (not in the file)",
)
@click.option(
    "--diffusion-steps",
    type=click.IntRange(min=1),
    default=4000,
    show_default=True,
    help="T it was trained with (paper: 4000)",
)
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default="cosine",
    show_default=True,
    help="noise schedule it was trained with (the paper's released models: cosine)",
)
@click.option(
    "--rescale-timesteps/--no-rescale-timesteps",
    default=True,
    show_default=True,
    help="whether it saw t scaled to [0, 1000) (the authors' training default)",
)
@click.option("--run-dir", type=click.Path(path_type=Path), required=True, help="output run")
@click.option("--overwrite", is_flag=True, help="replace a run already in --run-dir")
def convert(**fields: Any) -> None:
    """Load REFERENCE (a model.pt or ema_*.pt of openai/improved-diffusion) into iddpm's UNet
    and write it as RUN_DIR/checkpoints/…, ready for `iddpm sample` and `iddpm nll`.

    The architecture is read from the tensor shapes; the head count and the diffusion
    settings are not stored in such files, so give them. A model with 2x the image channels
    at its output is taken to have learned-range variance (the paper's), else fixed-large.
    """
    emit(convert_job(ConvertJob(**fields)))
