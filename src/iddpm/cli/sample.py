"""`iddpm sample`: draw samples from a trained model to .npz and a PNG grid."""

from __future__ import annotations

import time
from pathlib import Path

import click

from iddpm import distributed
from iddpm.build import load_model
from iddpm.cli._common import device_option, emit, pick_device, progress, run_dir_of
from iddpm.config import SampleConfig
from iddpm.diffusion.respace import parse_steps
from iddpm.generate import sample_images, save_npz
from iddpm.plots import save_image_grid


def default_output(checkpoint: Path, tag: str) -> Path:
    """RUN_DIR/samples/<tag>.npz next to the run the checkpoint belongs to."""
    return run_dir_of(checkpoint) / "samples" / f"{tag}.npz"


def step_tag(steps: str, ddim: bool, eta: float, num_timesteps: int) -> str:
    spec = steps or str(num_timesteps)
    kind = f"ddim-eta{eta:g}" if ddim else "ancestral"
    return f"{kind}_{spec.replace(',', '-')}"


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--num", default=64, show_default=True, help="number of samples (global)")
@click.option(
    "--steps",
    default="",
    help='step spec: "250", "ddim50", "10,15,20"; empty = all T steps (the full chain)',
)
@click.option("--ddim", is_flag=True, help="DDIM sampler instead of ancestral sampling")
@click.option("--eta", default=0.0, show_default=True, help="DDIM eta (0 = deterministic)")
@click.option("--seed", default=0, show_default=True, help="sample i depends only on (seed, i)")
@click.option("--batch-size", default=64, show_default=True, help="samples per network call")
@click.option("--class", "class_label", type=int, default=None, help="class for all samples")
@click.option("--ema/--no-ema", default=True, show_default=True, help="use EMA weights")
@click.option("--clip/--no-clip", default=True, show_default=True, help="clip x0 to [-1, 1]")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="output .npz")
@click.option("--grid", type=click.Path(path_type=Path), default=None, help="output PNG grid")
@device_option
def sample(
    checkpoint: Path,
    num: int,
    steps: str,
    ddim: bool,
    eta: float,
    seed: int,
    batch_size: int,
    class_label: int | None,
    ema: bool,
    clip: bool,
    out: Path | None,
    grid: Path | None,
    device: str,
) -> None:
    """Sample from CHECKPOINT (a run directory or a .pt file).

    Writes uint8 NHWC images under `arr_0` (labels under `arr_1` for class-conditional
    models) and a PNG grid; the last stdout line is a JSON summary.
    """
    distributed.init()
    dev = pick_device(device)
    cfg = SampleConfig(
        num=num,
        steps=steps,
        sampler="ddim" if ddim else "ancestral",
        sampler_options={"eta": eta} if ddim else {},
        clip_denoised=clip,
        use_ema=ema,
        batch_size=batch_size,
        seed=seed,
        class_label=class_label,
    )
    loaded = load_model(checkpoint, use_ema=ema, device=dev)
    parse_steps(steps or None, loaded.config.diffusion.num_timesteps)  # fail before any work
    tag = step_tag(steps, ddim, eta, loaded.config.diffusion.num_timesteps)
    out = out or default_output(loaded.checkpoint, f"{tag}_n{num}_seed{seed}")
    grid = grid or out.with_suffix(".png")
    start = time.perf_counter()
    with progress(num, f"sampling ({tag})", "img") as bar:
        samples = sample_images(loaded.model, loaded.config, cfg, dev, progress=bar.update)
    seconds = time.perf_counter() - start
    result = {"num": num, "steps": steps or str(loaded.config.diffusion.num_timesteps)}
    if distributed.is_main():
        save_npz(out, samples)
        save_image_grid(grid, samples.images[: min(len(samples.images), 256)])
        result.update(
            {
                "sampler": "ddim" if ddim else "ancestral",
                "eta": eta if ddim else None,
                "seed": seed,
                "out": str(out),
                "grid": str(grid),
                "seconds": round(seconds, 3),
                "images_per_s": round(num / seconds, 3) if seconds > 0 else None,
                "checkpoint": str(loaded.checkpoint),
            }
        )
    emit(result, out.with_suffix(".json"))
    distributed.shutdown()
