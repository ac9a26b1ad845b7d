"""`iddpm sweep`: sample quality and bits/dim against the number of sampling steps K."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import click

from iddpm import distributed
from iddpm.build import load_model
from iddpm.cli._common import device_option, emit, pick_device, progress, run_dir_of
from iddpm.cli.evaluate import reference_stats
from iddpm.config import EvalConfig, SampleConfig
from iddpm.data.spec import load_dataset
from iddpm.diffusion.respace import parse_steps
from iddpm.eval.features import get_extractor
from iddpm.eval.fid import compute_stats, fid_from_stats
from iddpm.eval.nll import evaluate_nll
from iddpm.generate import sample_images, save_npz
from iddpm.plots import plot_metric_vs_steps, save_image_grid

DEFAULT_STEPS = ("25", "50", "100", "250", "full")


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--steps",
    "step_counts",
    multiple=True,
    default=DEFAULT_STEPS,
    show_default=True,
    help="sampling step counts K to compare (repeat the option); 'full' = all T",
)
@click.option("--num", default=256, show_default=True, help="samples per K")
@click.option("--seed", default=0, show_default=True)
@click.option("--batch-size", default=256, show_default=True)
@click.option(
    "--ref",
    default=None,
    help="FID reference: data SPEC or stats .npz (default: the training data)",
)
@click.option(
    "--features",
    type=click.Choice(["digits", "inception"]),
    default="digits",
    show_default=True,
    help="feature extractor for FID",
)
@click.option(
    "--nll-images",
    default=0,
    show_default=True,
    help="also the bound of each K-step process on this many test images (0: skip)",
)
@click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="output folder")
@device_option
def sweep(
    checkpoint: Path,
    step_counts: tuple[str, ...],
    num: int,
    seed: int,
    batch_size: int,
    ref: str | None,
    features: str,
    nll_images: int,
    out_dir: Path | None,
    device: str,
) -> None:
    """FID (and optionally bits/dim) of CHECKPOINT for several numbers of sampling steps,
    with a plot of each against K (the paper's Figure 8 view). Last line is JSON."""
    distributed.init()
    dev = pick_device(device)
    loaded = load_model(checkpoint, device=dev)
    T = loaded.config.diffusion.num_timesteps
    specs = [str(T) if s == "full" else s for s in step_counts]
    counts = [len(parse_steps(s, T)) for s in specs]  # validates every spec before any work
    out_dir = out_dir or run_dir_of(loaded.checkpoint) / "sweep"
    extractor = get_extractor(features, device=dev)
    ref_stats = reference_stats(ref or loaded.config.train.data, "train", extractor, batch_size)
    test = None
    if nll_images:
        mcfg = loaded.config.model
        test = load_dataset(
            loaded.config.train.data,
            "test",
            resolution=mcfg.image_size,
            class_cond=mcfg.num_classes is not None,
        )
    rows = []
    for spec, k in zip(specs, counts):
        scfg = SampleConfig(num=num, steps=spec, batch_size=batch_size, seed=seed)
        with progress(num, f"sampling, {k} steps", "img") as bar:
            samples = sample_images(loaded.model, loaded.config, scfg, dev, progress=bar.update)
        row = {"steps": k, "spec": spec}
        if distributed.is_main():
            save_npz(out_dir / f"samples_{k}steps.npz", samples)
            save_image_grid(out_dir / f"samples_{k}steps.png", samples.images[:100])
        stats = compute_stats(extractor, samples.images, batch_size, shard_across_ranks=True)
        row["fid"] = fid_from_stats(stats, ref_stats)
        if test is not None:
            ecfg = EvalConfig(steps=spec, num_images=nll_images, seed=seed)
            labels = None if test.labels is None else test.labels[:nll_images]
            row["bpd"] = evaluate_nll(loaded, test.images[:nll_images], labels, ecfg, dev).bpd
        rows.append(row)
    result = {"steps": counts, "fid": [r["fid"] for r in rows], "features": extractor.name}
    if test is not None:
        result["bpd"] = [r["bpd"] for r in rows]
    if distributed.is_main():
        result.update(_write(out_dir, rows, extractor.name))
    emit(result, out_dir / "sweep.json")
    distributed.shutdown()


def _write(out_dir: Path, rows: list[dict], feature_name: str) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    steps = [r["steps"] for r in rows]
    paths = {"csv": str(out_dir / "sweep.csv")}
    paths["fid_plot"] = str(
        plot_metric_vs_steps(
            out_dir / "fid_vs_steps.png",
            steps,
            {feature_name: [r["fid"] for r in rows]},
            ylabel=feature_name,
            title="sample quality vs sampling steps",
        )
    )
    if "bpd" in rows[0] and all(math.isfinite(r["bpd"]) for r in rows):
        paths["bpd_plot"] = str(
            plot_metric_vs_steps(
                out_dir / "bpd_vs_steps.png",
                steps,
                {"bound": [r["bpd"] for r in rows]},
                ylabel="bits/dim",
                title="bound of the K-step process",
            )
        )
    return paths
