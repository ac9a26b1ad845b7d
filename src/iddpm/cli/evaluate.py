"""`iddpm nll` (bits/dim of a data set under the model's bound) and `iddpm fid`."""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from iddpm import distributed
from iddpm.build import load_model
from iddpm.cli._common import device_option, emit, pick_device, progress, run_dir_of
from iddpm.config import MC_METHODS, EvalConfig
from iddpm.data.images import load_npz
from iddpm.data.spec import load_dataset
from iddpm.diffusion.respace import parse_steps
from iddpm.eval.features import classifier_confidence, get_extractor
from iddpm.eval.fid import FeatureStats, compute_stats, fid_from_stats
from iddpm.eval.nll import evaluate_nll, write_terms_csv
from iddpm.plots import plot_bound_terms


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", default=None, help="data SPEC (default: the data the model trained on)")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--num-images", default=0, show_default=True, help="first N images (0: all)")
@click.option("--steps", default="", help="evaluate the bound of a strided process (step spec)")
@click.option("--batch-size", default=64, show_default=True, help="images per batch")
@click.option("--timestep-batch", default=16, show_default=True, help="timesteps per network call")
@click.option(
    "--mc",
    "mc_timesteps",
    default=0,
    show_default=True,
    help="unbiased Monte-Carlo estimate from K timesteps per image (0: exact)",
)
@click.option(
    "--mc-method",
    type=click.Choice(MC_METHODS),
    default="log-stratified",
    show_default=True,
    help="how --mc draws its timesteps (log-stratified: exact first steps, geometric strata)",
)
@click.option("--seed", default=0, show_default=True, help="seed of the forward-process noise")
@click.option("--ema/--no-ema", default=True, show_default=True, help="use EMA weights")
@click.option("--out-dir", type=click.Path(path_type=Path), default=None, help="output folder")
@device_option
def nll(
    checkpoint: Path,
    data: str | None,
    split: str,
    num_images: int,
    steps: str,
    batch_size: int,
    timestep_batch: int,
    mc_timesteps: int,
    mc_method: str,
    seed: int,
    ema: bool,
    out_dir: Path | None,
    device: str,
) -> None:
    """Bits/dim of a data set under the variational bound of CHECKPOINT (all T terms:
    decoder, KL terms, prior). Writes per-term CSV and a plot; last line is JSON."""
    distributed.init()
    dev = pick_device(device)
    loaded = load_model(checkpoint, use_ema=ema, device=dev)
    cfg = EvalConfig(
        data=data or loaded.config.train.data,
        split=split,
        num_images=num_images,
        steps=steps,
        batch_size=batch_size,
        timestep_batch=timestep_batch,
        mc_timesteps=mc_timesteps,
        mc_method=mc_method,
        use_ema=ema,
        seed=seed,
    )
    parse_steps(steps or None, loaded.config.diffusion.num_timesteps)  # fail before any work
    mcfg = loaded.config.model
    ds = load_dataset(
        cfg.data, cfg.split, resolution=mcfg.image_size, class_cond=mcfg.num_classes is not None
    )
    if ds.channels != mcfg.in_channels:
        raise ValueError(
            f"data {cfg.data!r} has {ds.channels} channels but the model takes "
            f"{mcfg.in_channels}; evaluate on data of the kind the model was trained on"
        )
    images = ds.images[: cfg.num_images or None]
    labels = None if ds.labels is None else ds.labels[: cfg.num_images or None]
    out_dir = out_dir or run_dir_of(loaded.checkpoint) / "eval"
    tag = (
        f"nll_{cfg.split}_{(steps or str(loaded.config.diffusion.num_timesteps)).replace(',', '-')}"
    )
    if mc_timesteps:
        tag += f"_mc{mc_timesteps}"
    start = time.perf_counter()
    with progress(len(images), f"bits/dim ({tag})", "img") as bar:
        result = evaluate_nll(loaded, images, labels, cfg, dev, progress=bar.update)
    summary = {
        **result.summary(),
        "data": cfg.data,
        "split": cfg.split,
        "steps": steps or str(loaded.config.diffusion.num_timesteps),
        "seconds": round(time.perf_counter() - start, 3),
        "checkpoint": str(loaded.checkpoint),
    }
    if distributed.is_main() and result.exact:
        csv_path = write_terms_csv(out_dir / f"{tag}_terms.csv", result)
        plot_path = plot_bound_terms(
            out_dir / f"{tag}_terms.png", result.terms_bpd, float(result.prior_bpd.mean())
        )
        summary.update({"terms_csv": str(csv_path), "terms_plot": str(plot_path)})
    emit(summary, out_dir / f"{tag}.json")
    distributed.shutdown()


def reference_stats(ref: str, split: str, extractor, batch_size: int) -> FeatureStats:
    """--ref: a stats .npz (mu/sigma or iddpm's sums) or a data SPEC whose images are used."""
    path = Path(ref)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as f:
            is_stats = "mu" in f.files or "feature_sum" in f.files
        if is_stats:
            return FeatureStats.load(path)
    ds = load_dataset(ref, split)
    return compute_stats(extractor, ds.images, batch_size, shard_across_ranks=True)


@click.command()
@click.argument("samples", type=click.Path(path_type=Path))
@click.option("--ref", required=True, help="reference: data SPEC (e.g. digits) or a stats .npz")
@click.option(
    "--ref-split", type=click.Choice(["train", "test"]), default="train", show_default=True
)
@click.option(
    "--features",
    type=click.Choice(["digits", "inception"]),
    default="digits",
    show_default=True,
    help="digits: offline extractor for the bundled digits (not comparable with Inception "
    "FID); inception: standard FID (needs pip install 'iddpm[fid]' and its weights)",
)
@click.option("--batch-size", default=256, show_default=True)
@click.option("--save-ref", type=click.Path(path_type=Path), default=None, help="write ref stats")
@device_option
def fid(
    samples: Path,
    ref: str,
    ref_split: str,
    features: str,
    batch_size: int,
    save_ref: Path | None,
    device: str,
) -> None:
    """Fréchet distance between SAMPLES.npz and a reference set (last line is JSON)."""
    distributed.init()
    dev = pick_device(device)
    images = load_npz(samples).images
    extractor = get_extractor(features, device=dev)
    ref_stats = reference_stats(ref, ref_split, extractor, batch_size)
    stats = compute_stats(extractor, images, batch_size, shard_across_ranks=True)
    result = {
        "fid": fid_from_stats(stats, ref_stats),
        "features": extractor.name,
        "comparable_to_inception": extractor.comparable_to_inception,
        "num_samples": int(stats.count),
        "num_ref": int(ref_stats.count) if ref_stats.count else None,
        "samples": str(samples),
        "ref": ref,
    }
    if features == "digits":
        result.update(classifier_confidence(extractor.predict_proba(images)))
    if save_ref is not None and distributed.is_main():
        result["saved_ref"] = str(ref_stats.save(save_ref))
    emit(result, samples.with_suffix(".fid.json"))
    distributed.shutdown()
