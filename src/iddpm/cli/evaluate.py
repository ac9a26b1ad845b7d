"""`iddpm nll` (bits/dim of a data set under the model's bound) and `iddpm fid`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from iddpm.cli._command import job_command
from iddpm.cli.options import bound_options, compile_option, pop_stats_config, stats_options
from iddpm.config import SPLITS, EvalConfig
from iddpm.workflows.nll import NllJob, nll_to_files
from iddpm.workflows.quality import FEATURES, FidJob, fid_of_files

POSITIVE = click.IntRange(min=1)


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@bound_options
@click.option("--ema/--no-ema", default=True, show_default=True, help="use EMA weights")
@click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="output folder")
@compile_option
@stats_options
@job_command
def nll(
    checkpoint: Path, out_dir: Path | None, ema: bool, device: Any, progress: Any, **fields: Any
) -> dict[str, Any]:
    """Bits/dim of a data set under the variational bound of CHECKPOINT (all T terms:
    decoder, KL terms, prior). Writes per-term CSV and a plot; last line is JSON."""
    stats, compile_ = pop_stats_config(fields), fields.pop("compile_")
    cfg = EvalConfig(use_ema=ema, **fields)
    return nll_to_files(NllJob(checkpoint, cfg, out_dir, stats, compile_), device, progress)


@click.command()
@click.argument("samples", type=click.Path(path_type=Path))
@click.option("--ref", required=True, help="reference: data SPEC (e.g. digits) or a stats .npz")
@click.option("--ref-split", type=click.Choice(SPLITS), default="train", show_default=True)
@click.option(
    "--features",
    type=click.Choice(FEATURES),
    default="digits",
    show_default=True,
    help="digits: offline extractor for the bundled digits (not comparable with "
    "Inception FID); inception: standard FID (needs pip install 'iddpm[fid]' and "
    "its weights)",
)
@click.option("--batch-size", type=POSITIVE, default=256, show_default=True)
@click.option("--save-ref", type=click.Path(path_type=Path), default=None, help="write ref stats")
@job_command
def fid(device: Any, progress: Any, **fields: Any) -> dict[str, Any]:
    """Fréchet distance between SAMPLES.npz and a reference set (last line is JSON)."""
    return fid_of_files(FidJob(**fields), device, progress)
