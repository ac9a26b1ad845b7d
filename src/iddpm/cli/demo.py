"""`iddpm demo`: the whole paper on the bundled digits, end to end, on a laptop CPU.

Trains the digits preset (cosine schedule, learned-range variance, L_hybrid) for a time
budget, samples with 50 strided steps and with the full chain, measures the exact bits/dim
of the test split, the offline digits FID of both sample sets and a classifier's
confidence, and writes RUN_DIR/report.md with the figures and the commands that reproduce
them. The last stdout line is a JSON object with the headline numbers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import torch

from iddpm import distributed
from iddpm.build import load_model
from iddpm.cli._common import device_option, emit, pick_device, progress
from iddpm.config import EvalConfig, SampleConfig
from iddpm.data.bundled import load_digits
from iddpm.eval.features import classifier_confidence, get_extractor
from iddpm.eval.fid import compute_stats, fid_from_stats
from iddpm.eval.nll import evaluate_nll, write_terms_csv
from iddpm.generate import sample_images, save_npz
from iddpm.pipeline import train_run
from iddpm.plots import plot_bound_terms, plot_schedules, plot_training_curves, save_image_grid
from iddpm.presets import get_preset
from iddpm.report import write_report


def fresh_run_dir(base: Path) -> Path:
    """`base`, or base-2, base-3, … : the first that holds no checkpoints yet."""
    candidate, k = base, 1
    while (candidate / "checkpoints").is_dir() and any((candidate / "checkpoints").iterdir()):
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate


def _sample_set(loaded, steps: str, num: int, seed: int, run: Path, device) -> dict[str, Any]:
    cfg = SampleConfig(num=num, steps=steps, batch_size=256, seed=seed)
    label = steps or str(loaded.config.diffusion.num_timesteps)
    start = time.perf_counter()
    with progress(num, f"sampling, {label} steps", "img") as bar:
        samples = sample_images(loaded.model, loaded.config, cfg, device, progress=bar.update)
    seconds = time.perf_counter() - start
    npz = save_npz(run / "samples" / f"demo_{label}steps.npz", samples)
    grid = save_image_grid(run / "samples" / f"demo_{label}steps.png", samples.images[:100])
    return {"steps": label, "images": samples.images, "npz": npz, "grid": grid, "seconds": seconds}


def _evaluate_samples(sets: list[dict[str, Any]], device) -> None:
    extractor = get_extractor("digits", device=device)
    ref = compute_stats(extractor, load_digits("train").images)
    for s in sets:
        s["fid"] = fid_from_stats(compute_stats(extractor, s["images"]), ref)
        s.update(classifier_confidence(extractor.predict_proba(s["images"])))


def run_demo(
    run: Path,
    minutes: float,
    max_steps: int,
    num_samples: int,
    sample_steps: str,
    nll_images: int,
    seed: int,
    device: torch.device,
    diffusion_steps: int | None = None,
) -> dict[str, Any]:
    """Train, sample, evaluate and report; returns the headline numbers."""
    base = get_preset("digits")
    train = base.train.replace(steps=max_steps, seed=seed, sample_every=0, log_every=20)
    diffusion = base.diffusion.replace(
        num_timesteps=diffusion_steps or base.diffusion.num_timesteps
    )
    cfg = base.replace(train=train, diffusion=diffusion)
    t0 = time.perf_counter()
    trained = train_run(cfg, run, resume=False, device=device, max_seconds=minutes * 60)
    loaded = load_model(run, device=device)
    sets = [
        _sample_set(loaded, steps, num_samples, seed, run, device) for steps in (sample_steps, "")
    ]
    _evaluate_samples(sets, device)
    test = load_digits("test")
    images = test.images[: nll_images or None]
    ecfg = EvalConfig(data="digits", split="test", batch_size=128, timestep_batch=10, seed=seed)
    start = time.perf_counter()
    with progress(len(images), "exact bits/dim, test split", "img") as bar:
        nll = evaluate_nll(loaded, images, None, ecfg, device, progress=bar.update)
    nll_seconds = time.perf_counter() - start
    headline = {
        "run_dir": str(run),
        "train_steps": trained["step"],
        "train_seconds": round(trained["wall_s"], 1),
        "bpd": nll.bpd,
        "bpd_stderr": nll.stderr,
        "nll_images": len(images),
        "nll_seconds": round(nll_seconds, 1),
        **{f"fid_{s['steps']}steps": s["fid"] for s in sets},
        **{f"confident_fraction_{s['steps']}steps": s["confident_fraction"] for s in sets},
        **{f"sample_seconds_{s['steps']}steps": round(s["seconds"], 1) for s in sets},
    }
    _write_pages(run, cfg, trained, sets, nll, headline, seed, num_samples, len(images))
    headline["report"] = str(run / "report.md")
    headline["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return headline


def _write_pages(run, cfg, trained, sets, nll, headline, seed, num, n_nll) -> Path:
    plots = run / "plots"
    terms_csv = write_terms_csv(run / "eval" / "nll_test_terms.csv", nll)
    figures = [(f"Samples, {s['steps']} steps", s["grid"], _grid_text(s)) for s in sets]
    if (run / "metrics.jsonl").is_file():  # a run shorter than one logging interval has none
        curves = plot_training_curves(plots / "training_curves.png", run / "metrics.jsonl")
        text = "Loss of L_hybrid per example, and the loss by timestep quartile (q0: small t)."
        figures.append(("Training curves", curves, text))
    figures += [
        (
            "Where the bits are",
            plot_bound_terms(plots / "bound_terms.png", nll.terms_bpd, float(nll.prior_bpd.mean())),
            "Each term of the variational bound on the test split, and its cumulative share: "
            "most of the bits are spent at the first few steps (the paper's Figure 2 view).",
        ),
        (
            "Noise schedules",
            plot_schedules(plots / "schedules.png", cfg.diffusion.num_timesteps),
            "ᾱ_t of the linear and cosine schedules (the paper's Figure 5 view).",
        ),
    ]
    numbers = [
        ("training", f"{trained['step']} steps", f"{trained['wall_s']:.0f} s"),
        (
            "test bits/dim (exact bound)",
            headline["bpd"],
            f"± {headline['bpd_stderr']:.3f} (s.e., {n_nll} images)",
        ),
    ]
    for s in sets:
        numbers.append(
            (
                f"digits-FID, {s['steps']} steps",
                s["fid"],
                f"{num} samples vs train split; not Inception FID",
            )
        )
        numbers.append(
            (
                f"confident samples, {s['steps']} steps",
                s["confident_fraction"],
                "classifier p ≥ 0.9",
            )
        )
    r = str(run)
    commands = {
        "Train (the demo stops on its time budget)": f"iddpm train --preset digits --run-dir {r}",
        **{
            f"Samples, {s['steps']} steps": f"iddpm sample {r} --num {num} --seed {seed}"
            + (f" --steps {s['steps']}" if s is sets[0] else "")
            for s in sets
        },
        "Bits/dim and the terms plot": f"iddpm nll {r} --split test --seed {seed}",
        "digits-FID": "iddpm fid SAMPLES.npz --ref digits",
        "Per-term values": f"cat {terms_csv}",
    }
    intro = (
        "Improved DDPM (Nichol & Dhariwal, 2021) on scikit-learn's 8×8 digits: cosine "
        "schedule, learned-range variance, L_hybrid, trained on a CPU for the time shown."
    )
    return write_report(run / "report.md", "iddpm demo", intro, numbers, figures, commands)


def _grid_text(s: dict[str, Any]) -> str:
    return (
        f"digits-FID {s['fid']:.2f}; {100 * s['confident_fraction']:.0f}% of samples are "
        f"labelled with p ≥ 0.9 by a classifier trained on the real digits."
    )


@click.command()
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="where everything goes (default: runs/demo, or runs/demo-2, … if taken)",
)
@click.option("--minutes", default=4.0, show_default=True, help="training time budget")
@click.option("--max-steps", default=100_000, show_default=True, help="training step cap")
@click.option("--num-samples", default=256, show_default=True, help="samples per sampler")
@click.option("--sample-steps", default="50", show_default=True, help="strided step spec")
@click.option("--nll-images", default=0, show_default=True, help="test images (0: all)")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--diffusion-steps",
    type=int,
    default=None,
    hidden=True,
    help="override T (for quick checks; the demo's model uses 1000)",
)
@device_option
def demo(
    run_dir: Path | None,
    minutes: float,
    max_steps: int,
    num_samples: int,
    sample_steps: str,
    nll_images: int,
    seed: int,
    diffusion_steps: int | None,
    device: str,
) -> None:
    """Train on the bundled digits, sample in 50 steps and the full chain, measure
    bits/dim and digits-FID, and write RUN_DIR/report.md."""
    run = run_dir if run_dir is not None else fresh_run_dir(Path("runs/demo"))
    dev = pick_device(device)
    headline = run_demo(
        run, minutes, max_steps, num_samples, sample_steps, nll_images, seed, dev, diffusion_steps
    )
    emit(headline, run / "demo_result.json")
    distributed.shutdown()
