"""`iddpm nll` (bits/dim of a data set under the model's bound) and `iddpm fid`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from iddpm.cli._command import job_command
from iddpm.cli.options import (
    bound_options,
    compile_option,
    pop_stats_config,
    shard_options,
    stats_options,
)
from iddpm.config import SPLITS, EvalConfig
from iddpm.workflows.fid import SHARD_SIZE, FidJob, check_replicates, fid_of_files
from iddpm.workflows.nll import SHARD_SIZE as NLL_SHARD_SIZE
from iddpm.workflows.nll import NllJob, nll_to_files
from iddpm.workflows.quality import FEATURES

POSITIVE = click.IntRange(min=1)


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@bound_options
@click.option("--ema/--no-ema", default=True, show_default=True, help="use EMA weights")
@click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="output folder")
@shard_options(NLL_SHARD_SIZE, "images", "OUT_DIR/<tag>.job")
@compile_option
@stats_options
@job_command
def nll(
    checkpoint: Path,
    out_dir: Path | None,
    ema: bool,
    shard_size: int,
    job_dir: Path | None,
    device: Any,
    progress: Any,
    **fields: Any,
) -> dict[str, Any]:
    """Bits/dim of a data set under the variational bound of CHECKPOINT (all T terms:
    decoder, KL terms, prior). Writes per-term CSV and a plot; last line is JSON."""
    stats, compile_ = pop_stats_config(fields), fields.pop("compile_")
    cfg = EvalConfig(use_ema=ema, **fields)
    return nll_to_files(
        NllJob(checkpoint, cfg, out_dir, stats, compile_, shard_size, job_dir), device, progress
    )


@click.command()
@click.argument("samples")
@click.option(
    "--ref",
    required=True,
    help="reference: data SPEC (e.g. digits), a statistics .npz, or a reference batch "
    "(.npz with images under arr_0 and mu/sigma)",
)
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
@click.option(
    "--bootstrap",
    type=int,
    default=None,
    help="B replicates: a 95% interval for every metric (Poisson bootstrap of the samples)",
)
@shard_options(SHARD_SIZE, "samples of the feature pass", "beside --out")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="summary JSON (default: SAMPLES-stem.fid.json beside SAMPLES)",
)
@job_command
def fid(device: Any, progress: Any, bootstrap: int | None, **fields: Any) -> dict[str, Any]:
    """Sample quality of SAMPLES (an .npz, a folder of images, a sample job folder or a
    data SPEC) against a reference: FID, sFID, Inception Score, KID, precision/recall
    (last line is JSON). Rerunning a killed job resumes its feature pass."""
    replicates = 0 if bootstrap is None else check_replicates(bootstrap)
    return fid_of_files(FidJob(bootstrap=replicates, **fields), device, progress)
