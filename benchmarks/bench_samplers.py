"""Samples and bound per network call on a digits model: the leaderboard of issue 10.

On a digits checkpoint trained as the demo trains it (digits preset; `--checkpoint RUN`,
or one trained here for `--train-steps` steps, which the demo's 4-minute budget reaches
on an idle 2-core machine):
- digits-FID and precision/recall (k = 3) of `--num` samples for every (sampler, NFE),
  for each of `--seeds` (sample i depends only on (seed, i)); FID of 1000 samples moves by
  about 2 between seeds here, so targets are judged on the mean over seeds;
- the K-step bound on the test digits for the even spacing with the model's Σ, the
  bound-optimal schedule (DP over costs on `--steps-images` training images, then evaluated
  on the test images like the others), Analytic-DPM's Σ and both fixed Σ.
Prints one JSON object with every figure and the issue's targets checked.

    python benchmarks/bench_samplers.py --checkpoint runs/demo
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import result_header
from iddpm.build import load_model
from iddpm.config import EvalConfig, SampleConfig
from iddpm.diffusion import registry
from iddpm.diffusion import schedules as noise_schedules
from iddpm.diffusion.gaussian import GaussianDiffusion
from iddpm.diffusion.respace import format_steps, karras_steps, logsnr_steps
from iddpm.workflows.context import JobContext, StatsConfig
from iddpm.workflows.nll import bits_per_dim_of
from iddpm.workflows.plan import SamplingPlan
from iddpm.workflows.quality import extractor_for, reference, sample_and_score
from iddpm.workflows.steps import StepsJob, schedules
from iddpm.workflows.train import TrainJob, train

SAMPLERS = ("ancestral", "ddim", "dpmpp2m", "dpmpp3m", "dpmpp2m-sde", "analytic", "unipc",
            "ipndm", "heun", "euler-ancestral")  # fmt: skip
NFE = (5, 10, 20, 50)
BOUND_K = (10, 25, 50)
SIGMAS = ("model", "analytic", "fixed-small", "fixed-large")


def trained_run(args: argparse.Namespace, workdir: Path) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    from iddpm.presets import get_preset

    base = get_preset("digits")
    cfg = base.replace(train=base.train.replace(steps=args.train_steps, sample_every=0))
    run = workdir / "digits"
    train(TrainJob(cfg, run), args.device)
    return run


def calls_of(name: str, steps: int) -> int:
    """Network calls of sampler `name` for a process of `steps` indices (at most)."""
    return int(registry.get(name).calls(steps))


def steps_for(name: str, nfe: int) -> int:
    """The most process steps K whose network calls fit in `nfe` (Heun: 2K − 1 <= nfe)."""
    k = nfe
    while k > 1 and calls_of(name, k) > nfe:
        k -= 1
    return k


def parse_sampler(token: str) -> tuple[str, dict]:
    """'name' or 'name:key=value+key=value' -> (name, options)."""
    name, _, rest = token.partition(":")
    opts = dict(kv.split("=", 1) for kv in rest.split("+") if kv)
    registry.make_options(name, opts)  # fails early
    return name, opts


def spec_for(spacing: str, k: int, abar: torch.Tensor, T: int) -> str:
    """A step spec of k steps: 'even', 'trailing', 'logsnr', 'karras', 'logsnr@FLOOR',
    'karras@SIGMA_MAX' (the tunables of those spacings, for measuring them), or 'at:…'
    (a fixed list: used as is)."""
    kind, _, arg = spacing.partition("@")
    if kind.startswith("at:"):
        return kind.replace("+", ",")  # 'at:0+5+9' on the command line (commas split spacings)
    if not arg:
        return str(k) if kind == "even" else f"{kind}{k}"
    lo, _, hi = arg.partition(":")  # logsnr@FLOOR:CEILING, karras@SIGMA_MIN:SIGMA_MAX
    if kind == "logsnr":
        ceiling = float(hi) if hi else math.inf
        return format_steps(logsnr_steps(k, abar, floor=float(lo), ceiling=ceiling))
    if kind == "karras":
        return format_steps(karras_steps(k, abar, sigma_min=float(lo), sigma_max=float(hi)))
    raise ValueError(f"unknown spacing {spacing!r}")


def leaderboard(loaded, args: argparse.Namespace) -> list[dict]:
    extractor = extractor_for("digits", args.device)
    ref = reference("digits", "train", extractor)
    dcfg = loaded.config.diffusion
    abar = GaussianDiffusion(noise_schedules.get(dcfg.schedule, dcfg.num_timesteps)).alphas_cumprod
    rows = []
    for token in args.samplers:
        name, opts = parse_sampler(token)
        for nfe in args.nfe:
            k = steps_for(name, nfe)
            for spacing in args.spacings:
                spec = spec_for(spacing, k, abar, dcfg.num_timesteps)
                runs = []
                for seed in args.seeds:
                    cfg = SampleConfig(num=args.num, steps=spec, sampler=name,
                                       sampler_options=opts, batch_size=args.batch_size,
                                       seed=seed)  # fmt: skip
                    plan = SamplingPlan(loaded, cfg, JobContext(args.device))
                    runs.append(sample_and_score(plan, extractor, ref))
                out = {"sampler": token, "spacing": spacing, "nfe": calls_of(name, k),
                       "steps": k, "spec": spec, **_summary(runs)}  # fmt: skip
                print(json.dumps(out), file=sys.stderr, flush=True)
                rows.append(out)
    return rows


THROUGHPUT = (("ancestral", "50"), ("ipndm", "karras10"), ("heun", "karras5"),
              ("dpmpp2m-sde", "trailing10"), ("unipc", "karras10"))  # fmt: skip


def throughput(loaded, args: argparse.Namespace, batch: int = 256, reps: int = 3) -> list[dict]:
    """Images/s of one batch of `batch` samples for each (sampler, spec) of THROUGHPUT,
    interleaved over `reps` rounds (medians; the first round also warms up)."""
    plans = {
        (name, spec): SamplingPlan(loaded, SampleConfig(num=batch, steps=spec, sampler=name,
                                                         batch_size=batch), JobContext(args.device))
        for name, spec in THROUGHPUT
    }  # fmt: skip
    for plan in plans.values():
        plan.draw(range(8))  # warm-up, statistics
    times: dict = {key: [] for key in plans}
    for _ in range(reps):
        for key, plan in plans.items():
            start = time.perf_counter()
            plan.draw(range(batch))
            times[key].append(time.perf_counter() - start)
    return [{"sampler": name, "spec": spec, "nfe": plans[(name, spec)].calls,
             "images_per_s": round(batch / statistics.median(times[(name, spec)]), 1),
             "seconds": [round(t, 2) for t in times[(name, spec)]]}
            for name, spec in plans]  # fmt: skip


def _summary(runs: list[dict]) -> dict:
    """Mean over seeds of each score, and the FID of every seed."""
    out = {}
    for key in ("fid", "precision", "recall", "confident_fraction", "sample_seconds"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(statistics.fmean(values), 4) if values else None
    out["fid_per_seed"] = [round(r["fid"], 3) for r in runs]
    out["fid_sd"] = round(statistics.stdev(out["fid_per_seed"]), 3) if len(runs) > 1 else None
    return out


def bounds(loaded, args: argparse.Namespace) -> dict:
    def bpd(steps: str, sigma: str) -> float:
        cfg = EvalConfig(steps=steps, num_images=args.nll_images, seed=args.seed, sigma=sigma)
        return round(bits_per_dim_of(loaded, cfg, JobContext(args.device)).bpd, 4)

    out: dict = {f"even_{s}": {k: bpd(str(k), s) for k in BOUND_K} for s in SIGMAS}
    start = time.perf_counter()
    job = StepsJob(Path(args.run), nfe=BOUND_K, num_images=args.steps_images, seed=args.seed,
                   decoder_steps=args.decoder_steps)  # fmt: skip
    rows = schedules(job, loaded, JobContext(args.device))
    out["dp_seconds"] = round(time.perf_counter() - start, 1)
    out["dp_specs"] = {r["nfe"]: r["spec"] for r in rows}
    out["dp_cost_matrix_bound"] = {r["nfe"]: round(r["bound_bpd"], 4) for r in rows}
    out["dp_model"] = {r["nfe"]: bpd(r["spec"], "model") for r in rows}
    return out


def targets(rows: list[dict], b: dict) -> dict:
    fid = {(r["sampler"], r["nfe"]): r["fid"] for r in rows}
    if not b or not all(k in fid for k in (("dpmpp2m", 10), ("ancestral", 50))):
        return {}
    return {
        "dpmpp2m_10_fid_le_ancestral_50": fid[("dpmpp2m", 10)] <= fid[("ancestral", 50)],
        "dpmpp2m-sde_10_fid_le_ancestral_50": fid[("dpmpp2m-sde", 10)] <= fid[("ancestral", 50)],
        "dp25_at_least_0.3_tighter_than_even25": b["dp_model"][25] <= b["even_model"][25] - 0.3,
        "analytic25_beats_fixed25": b["even_analytic"][25]
        < min(b["even_fixed-small"][25], b["even_fixed-large"][25]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="", help="digits run (default: train one here)")
    p.add_argument("--train-steps", type=int, default=4000)
    p.add_argument("--num", type=int, default=1000, help="samples per (sampler, NFE)")
    p.add_argument("--samplers", default=",".join(SAMPLERS),
                   help="comma list of 'name' or 'name:key=value+key=value'")  # fmt: skip
    p.add_argument("--nfe", default=",".join(map(str, NFE)), help="network-call budgets")
    p.add_argument("--spacings", default="even",
                   help="comma list: even, trailing, logsnr, karras, logsnr@FLOOR:CEILING, "
                   "karras@SIGMA_MIN:SIGMA_MAX, at:S0+S1+…")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--no-bounds", action="store_true", help="skip the bound measurements")
    p.add_argument("--throughput", action="store_true", help="also time one batch of 256")
    p.add_argument("--throughput-only", action="store_true", help="only time, no FID")
    p.add_argument("--nll-images", type=int, default=0, help="test images for bounds (0: all)")
    p.add_argument("--steps-images", type=int, default=256)
    p.add_argument("--decoder-steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of the bounds' noise")
    p.add_argument("--seeds", default="0,1,2", help="sample seeds of the leaderboard")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    args.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    args.samplers = [x for x in args.samplers.split(",") if x.strip()]
    args.nfe = [int(x) for x in args.nfe.split(",") if x.strip()]
    args.spacings = [x for x in args.spacings.split(",") if x.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        args.run = str(trained_run(args, Path(tmp)))
        loaded = load_model(args.run, device=args.device)
        header = result_header("bench_samplers", args.device)
        t0 = time.perf_counter()
        rows = [] if args.throughput_only else leaderboard(loaded, args)
        speed = throughput(loaded, args) if args.throughput or args.throughput_only else []
        b = {} if args.no_bounds else bounds(loaded, args)
    result = {
        **header,
        "checkpoint": args.checkpoint or f"trained here, {args.train_steps} steps",
        "num_samples": args.num,
        "spacings": args.spacings,
        "load": os.getloadavg(),
        "stats_images": StatsConfig().num_images,
        "leaderboard": rows,
        "throughput_batch_256": speed,
        "bounds_bpd": b,
        "targets": targets(rows, b),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
