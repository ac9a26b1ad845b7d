"""`iddpm convert`: turn a checkpoint of openai/improved-diffusion into an iddpm run."""

from __future__ import annotations

from pathlib import Path

import click

from iddpm.checkpoint import run_dir as make_run_dir
from iddpm.checkpoint import save_checkpoint
from iddpm.cli._common import emit
from iddpm.config import SCHEDULES, DiffusionConfig, ExperimentConfig, TrainConfig
from iddpm.model.convert import load_reference_checkpoint


@click.command()
@click.argument("reference", type=click.Path(path_type=Path))
@click.option("--image-size", type=int, required=True, help="resolution the model was trained at")
@click.option("--num-heads", default=4, show_default=True, help="attention heads (not in the file)")
@click.option(
    "--diffusion-steps", default=4000, show_default=True, help="T it was trained with (paper: 4000)"
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
def convert(
    reference: Path,
    image_size: int,
    num_heads: int,
    diffusion_steps: int,
    schedule: str,
    rescale_timesteps: bool,
    run_dir: Path,
) -> None:
    """Load REFERENCE (a model.pt or ema_*.pt of openai/improved-diffusion) into iddpm's UNet
    and write it as RUN_DIR/checkpoints/…, ready for `iddpm sample` and `iddpm nll`.

    The architecture is read from the tensor shapes; the head count and the diffusion
    settings are not stored in such files, so give them. A model with 2x the image channels
    at its output is taken to have learned-range variance (the paper's), else fixed-large.
    """
    model_cfg, model = load_reference_checkpoint(reference, image_size, num_heads=num_heads)
    learned = model_cfg.out_channels == 2 * model_cfg.in_channels
    cfg = ExperimentConfig(
        diffusion=DiffusionConfig(
            num_timesteps=diffusion_steps,
            schedule=schedule,
            var_type="learned-range" if learned else "fixed-large",
            rescale_timesteps=rescale_timesteps,
        ),
        model=model_cfg,
        train=TrainConfig(data="", class_cond=model_cfg.num_classes is not None),
    )
    run = make_run_dir(run_dir).create(cfg)
    path = save_checkpoint(run, {"model": model.state_dict(), "ema": {}}, cfg, step=0)
    params = sum(p.numel() for p in model.parameters())
    emit({"checkpoint": str(path), "parameters": params, "config": cfg.to_dict()})
