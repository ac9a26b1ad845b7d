"""Guidance on a class-conditional digits model (issue 17): one JSON object.

On a digits-cond run trained as the demo trains (`--run`; the digits-cond preset: class
dropout 0.1) and, optionally, a noise-aware classifier of it (`--classifier`, a run of
`iddpm train-classifier`):
- for every classifier-free guidance scale W of `--scales` (and classifier-guidance
  scales S of `--classifier-scales`, on the null-label model, W = 0), `--num` samples
  per seed of `--seeds`, class-balanced (sample i asks for class i mod 10): digits-FID
  and precision/recall (k = 3) against the training digits, and the share of samples
  that the bundled digits classifier labels as the class asked for;
- which branch's variance drives the learned Σ: the conditional (default) against the
  null one, at `--variance-scale`;
- `iddpm classify` on the test digits (`--classify-mc` Monte-Carlo steps per image and
  class, or the exact bound over `--classify-steps`) against the bundled classifier;
- the precision/recall trade-off against W, plotted to `--plot`.

    python benchmarks/bench_guidance.py --run runs/digits-cond --classifier runs/clf
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import result_header
from iddpm.build import load_model
from iddpm.config import EvalConfig, SampleConfig
from iddpm.data.spec import load_dataset
from iddpm.diffusion.guidance import classifier_free
from iddpm.generate import Samples
from iddpm.workflows.classify import ClassifyJob, classify_to_files
from iddpm.workflows.context import JobContext
from iddpm.workflows.guidance import (
    class_rows,
    load_classifier,
)
from iddpm.workflows.plan import SamplingPlan
from iddpm.workflows.plots import save_image_grid
from iddpm.workflows.quality import extractor_for, reference, score


def draw(loaded, request: SampleConfig, args, seed: int, transforms=(), clf=None) -> Samples:
    """args.num class-balanced samples of `seed` (sample i: class i mod K, noise from
    (seed, i)) through the sampling plan: the request's guidance, then `transforms`."""
    request = request.replace(
        num=args.num, seed=seed, steps=args.steps, sampler=args.sampler, batch_size=args.batch
    )
    plan = SamplingPlan(loaded, request, JobContext(args.device), transforms, classifier=clf)
    return plan.draw(range(args.num))


def cell(loaded, request, extractor, ref, args, meta: dict, transforms=(), clf=None) -> dict:
    """Scores of one guidance setting, per seed and their mean."""
    per_seed = []
    for seed in args.seeds:
        start = time.perf_counter()
        samples = draw(loaded, request, args, seed, transforms, clf)
        seconds = time.perf_counter() - start
        s = score(samples.images, extractor, ref, labels=samples.labels)
        s["sample_seconds"] = round(seconds, 1)
        per_seed.append(s)
    keys = ("fid", "precision", "recall", "class_accuracy", "sample_seconds")
    row = dict(meta)
    for k in keys:
        row[k] = round(statistics.fmean(s[k] for s in per_seed), 4)
    row["fid_per_seed"] = [round(s["fid"], 3) for s in per_seed]
    row["class_accuracy_per_seed"] = [round(s["class_accuracy"], 4) for s in per_seed]
    print(json.dumps(row), flush=True, file=sys.stderr)  # progress
    return row


def guidance_rows(loaded, clf, extractor, ref, args) -> list[dict]:
    def cost(request: SampleConfig) -> dict:
        plan = SamplingPlan(loaded, request.replace(steps=args.steps, sampler=args.sampler),
                            classifier=clf)  # fmt: skip
        return {k: v for k, v in plan.cost().items() if k != "classifier"}

    rows = []
    for w in args.scales:
        request = SampleConfig(guidance_scale=w)
        meta = {"kind": "classifier-free", "scale": w, **cost(request)}
        rows.append(cell(loaded, request, extractor, ref, args, meta))
    if args.variance_scale is not None:  # the other branch's Σ, as an extra transform
        null = loaded.config.model.num_classes

        def null_variance(fn):
            return classifier_free(fn, args.variance_scale, null, variance_from="null")

        meta = {"kind": "classifier-free, null-branch variance", "scale": args.variance_scale,
                **cost(SampleConfig(guidance_scale=args.variance_scale))}  # fmt: skip
        rows.append(cell(loaded, SampleConfig(), extractor, ref, args, meta, [null_variance]))
    for s in args.classifier_scales if clf is not None else ():
        request = SampleConfig(
            guidance_scale=0.0, classifier=str(args.classifier), classifier_scale=s
        )
        meta = {"kind": "classifier (null-label model)", "scale": s, **cost(request)}
        rows.append(cell(loaded, request, extractor, ref, args, meta, clf=clf))
    return rows


def diffusion_classifier(run: Path, extractor, args) -> dict:
    """`iddpm classify` on the test digits, and the bundled classifier on the same."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = EvalConfig(
            split="test",
            steps=args.classify_steps,
            mc_timesteps=args.classify_mc,
            batch_size=args.batch,
            timestep_batch=args.timestep_batch,
        )
        out = classify_to_files(ClassifyJob(run, cfg, Path(tmp)), args.device)
    test = load_dataset("digits", "test", class_cond=True)
    probs = extractor.predict_proba(test.images)
    return {
        "estimator": out["estimator"],
        "accuracy": out["accuracy"],
        "accuracy_stderr": out["accuracy_stderr"],
        "seconds": out["seconds"],
        "marginal_bpd": out["marginal_bpd"],
        "bpd_true_label": out["bpd_true_label"],
        "confusion": out["confusion"],
        "num_images": out["num_images"],
        "bundled_classifier_accuracy": float((probs.argmax(1) == test.labels).mean()),
    }


def classifier_accuracy_by_t(clf, loaded, args) -> dict[str, float]:
    """The noise-aware classifier's accuracy on the test digits noised to step t (one
    noise draw per image), for several t: it should fall to chance (0.1) at T − 1."""
    from iddpm.build import build_diffusion
    from iddpm.diffusion.respace import ModelAdapter, timestep_scale

    dcfg = loaded.config.diffusion
    diffusion = build_diffusion(dcfg)
    fn = ModelAdapter(clf.model, scale=timestep_scale(dcfg.num_timesteps, dcfg.rescale_timesteps))
    test = load_dataset("digits", "test", class_cond=True)
    x0 = torch.as_tensor(test.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.as_tensor(test.labels)
    T, out = dcfg.num_timesteps, {}
    for t in (0, T // 10, T // 4, T // 2, 3 * T // 4, T - 1):
        tt = torch.full((len(y),), t)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            logits = fn(diffusion.q_sample(x0, tt, noise), tt)
        out[str(t)] = round(float((logits.argmax(1) == y).float().mean()), 4)
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cf = sorted((r for r in rows if r["kind"] == "classifier-free"), key=lambda r: r["scale"])
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    w = [r["scale"] for r in cf]
    ax[0].plot(w, [r["precision"] for r in cf], "o-", label="precision")
    ax[0].plot(w, [r["recall"] for r in cf], "s-", label="recall")
    ax[0].plot(w, [r["class_accuracy"] for r in cf], "^-", label="class accuracy")
    ax[0].set_xlabel("guidance scale W")
    ax[0].legend()
    ax[0].grid(alpha=0.3)
    ax[1].plot(w, [r["fid"] for r in cf], "o-")
    ax[1].set_xlabel("guidance scale W")
    ax[1].set_ylabel("digits-FID (class-balanced)")
    ax[1].grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def class_grid(loaded, args) -> str:
    """10 samples per class at scale args.grid_scale, one row per class, as a PNG."""
    grid_args = argparse.Namespace(**{**vars(args), "num": 100})
    samples = draw(loaded, SampleConfig(guidance_scale=args.grid_scale), grid_args, seed=0)
    rows = class_rows(samples.images, samples.labels)
    return str(save_image_grid(args.grid, rows, nrow=10, scale=6))


def targets(rows: list[dict], clf: dict | None) -> dict:
    cf = [r for r in rows if r["kind"] == "classifier-free"]
    base = next((r for r in cf if r["scale"] == 1.0), None)
    ok = [r for r in cf if r["class_accuracy"] >= 0.99 and base and r["fid"] <= base["fid"]]
    out = {
        "scales_with_99pct_class_accuracy_and_fid_no_worse_than_w1": [r["scale"] for r in ok],
        "class_accuracy_99_with_fid_no_worse_met": bool(ok),
    }
    if clf is not None:
        out["diffusion_classifier_95pct_met"] = clf["accuracy"] >= 0.95
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="digits-cond run (read only: copied)")
    p.add_argument("--classifier", default="", help="noise-aware classifier run")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--scales", default="0,1,2,3,5")
    p.add_argument("--classifier-scales", default="1,3")
    p.add_argument("--variance-scale", type=float, default=3.0)
    p.add_argument("--sampler", default="ancestral")
    p.add_argument("--steps", default="50")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--classify-mc", type=int, default=100)
    p.add_argument("--classify-steps", default="")
    p.add_argument("--timestep-batch", type=int, default=20)
    p.add_argument("--no-classify", action="store_true")
    p.add_argument("--plot", default="", help="PNG of precision/recall/accuracy/FID vs W")
    p.add_argument("--grid", default="", help="PNG of 10 samples per class (one row each)")
    p.add_argument("--grid-scale", type=float, default=3.0, help="W of the --grid samples")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    args.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    args.scales = [float(x) for x in args.scales.split(",") if x.strip()]
    args.classifier_scales = [float(x) for x in args.classifier_scales.split(",") if x.strip()]
    result = result_header("bench_guidance", args.device)
    result.update(sampler=args.sampler, steps=args.steps, num=args.num, seeds=args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"  # classify writes into RUN/eval: work on a copy
        shutil.copytree(args.run, run, ignore=shutil.ignore_patterns("cache"))
        loaded = load_model(run, device=args.device)
        clf = load_classifier(args.classifier, loaded, args.device) if args.classifier else None
        extractor = extractor_for("digits", args.device)
        ref = reference("digits", "train", extractor)
        start = time.perf_counter()
        rows = guidance_rows(loaded, clf, extractor, ref, args)
        result["sampling_seconds"] = round(time.perf_counter() - start, 1)
        result["rows"] = rows
        if clf is not None:
            result["noise_aware_classifier_accuracy_by_t"] = classifier_accuracy_by_t(
                clf, loaded, args
            )
        classify = None if args.no_classify else diffusion_classifier(run, extractor, args)
        result["classify"] = classify
        if args.grid:
            result["grid"] = class_grid(loaded, args)
            result["grid_scale"] = args.grid_scale
    if args.plot:
        plot(rows, Path(args.plot))
        result["plot"] = args.plot
    result["targets"] = targets(rows, classify)
    result["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
