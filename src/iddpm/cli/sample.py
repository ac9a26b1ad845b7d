"""`iddpm sample`: draw samples from a trained model to .npz and a PNG grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from iddpm.cli._command import job_command
from iddpm.cli.options import (
    compile_option,
    pop_sampler_options,
    pop_stats_config,
    sampler_choice,
    sampler_options,
    shard_options,
    stats_options,
)
from iddpm.config import SampleConfig
from iddpm.workflows.sample import SHARD_SIZE, SampleJob, sample_to_files

STEPS_HELP = (
    'step spec: "50" (even, the reference\'s), "trailing50" (reaches T-1), "logsnr50" '
    '(uniform in log-SNR), "ddim50", "10,15,20" (sections), "at:0,9,99,999" (these steps); '
    "empty = all T steps (the full chain)"
)


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--num", type=click.IntRange(min=1), default=64, show_default=True, help="samples")
@click.option("--steps", default="", help=STEPS_HELP)
@sampler_choice()
@sampler_options
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="sample i depends only on (seed, i)",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="samples per network call",
)
@click.option("--class", "class_label", type=int, default=None, help="class for all samples")
@click.option(
    "--guidance-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="classifier-free guidance W: 1 = the conditional model, 0 = its null class, >1 "
    "follows the class more closely (needs a model trained with --class-dropout)",
)
@click.option(
    "--classifier",
    default="",
    help="classifier guidance: a run of `iddpm train-classifier` for this model",
)
@click.option(
    "--classifier-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="classifier guidance scale S (with --classifier)",
)
@click.option("--ema/--no-ema", default=True, show_default=True, help="use EMA weights")
@click.option("--clip/--no-clip", default=True, show_default=True, help="clip x0 to [-1, 1]")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="output .npz")
@click.option("--grid", type=click.Path(path_type=Path), default=None, help="output PNG grid")
@click.option(
    "--png-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="also write one PNG per sample here (<index>[_label<y>].png; new or empty folder)",
)
@shard_options(SHARD_SIZE, "samples", "OUT-stem.job beside --out")
@compile_option
@stats_options
@job_command
def sample(
    checkpoint: Path,
    num: int,
    steps: str,
    sampler: str,
    seed: int,
    batch_size: int,
    class_label: int | None,
    guidance_scale: float,
    classifier: str,
    classifier_scale: float,
    ema: bool,
    clip: bool,
    out: Path | None,
    grid: Path | None,
    png_dir: Path | None,
    shard_size: int,
    job_dir: Path | None,
    device: Any,
    progress: Any,
    **values: Any,
) -> dict[str, Any]:
    """Sample from CHECKPOINT (a run directory or a .pt file).

    Writes uint8 NHWC images under `arr_0` (labels under `arr_1` for class-conditional
    models), a PNG grid and the JSON summary beside them. The samples are drawn in shards:
    rerunning a killed command resumes it, with the same bytes as an uninterrupted run.
    """
    cfg = SampleConfig(
        num=num,
        steps=steps,
        sampler=sampler,
        sampler_options=pop_sampler_options(values),
        clip_denoised=clip,
        use_ema=ema,
        batch_size=batch_size,
        seed=seed,
        class_label=class_label,
        guidance_scale=guidance_scale,
        classifier=classifier,
        classifier_scale=classifier_scale,
    )
    stats, compile_ = pop_stats_config(values), values.pop("compile_")
    job = SampleJob(checkpoint, cfg, out, grid, stats, compile_, shard_size, job_dir, png_dir)
    return sample_to_files(job, device, progress)
