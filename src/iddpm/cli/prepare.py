"""`iddpm prepare-data`: a data set written once in a memory-mapped layout (ImageNet scale)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from iddpm.cli._command import emit
from iddpm.cli._progress import tqdm_progress
from iddpm.config import SPLITS
from iddpm.workflows.data import PrepareJob, prepare


@click.command("prepare-data")
@click.argument("spec")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(SPLITS), default="train", show_default=True)
@click.option(
    "--resolution",
    type=click.IntRange(min=1),
    default=None,
    help="centre-crop and resize to this side (default: keep)",
)
@click.option(
    "--class-cond/--no-class-cond",
    default=None,
    help="keep the labels (default: when the source has them)",
)
def prepare_data(**fields: Any) -> None:
    """Write the images (and labels) of data SPEC once into folder OUT as uint8 arrays that
    training maps from disk, so each process holds only its batches in memory.

    SPEC: digits, cifar10:DIR, FILE.npz, a folder of images, or several .npz files (a glob
    in quotes or a folder of them, e.g. the downsampled-ImageNet batches). OUT must not
    exist; it appears complete or not at all. Then: iddpm train --data OUT …
    """
    emit(prepare(PrepareJob(**fields), tqdm_progress))
