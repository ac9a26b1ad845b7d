"""Overhead of the periodic evaluation at the presets' defaults; prints one JSON object.

    python benchmarks/bench_train_eval.py                    # digits and CIFAR-10 (CPU)
    python benchmarks/bench_train_eval.py --models digits --rounds 5

Overhead = (evaluation seconds / eval_every + FID seconds / fid_every) / seconds per
training step: the fraction by which the defaults lengthen a run.

- digits: the preset itself (batch 64; the held-out and training bits/dim of 200 images
  each at 16 log-stratified steps; digits-FID of 256 ancestral samples at 25 steps).
- cifar10: the paper's CIFAR-10 UNet. On a CPU its batch of 128 and 2 × 500 evaluation
  images take minutes per round, so both are measured at a reduced size (--cifar-batch
  images per training step, one chunk of --cifar-eval-images images per set) and scaled
  linearly to the preset's sizes (per-image costs: the network's batch dimension is
  embarrassingly parallel on a CPU, which stays busy at these sizes). FID is off in that
  preset (Inception is an optional extra).

Training steps, evaluations and FIDs are interleaved round by round (a noisy machine slows
them alike); figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import result_header, set_threads  # first: the CLI's start-up before torch

# isort: split
import numpy as np
import torch

from iddpm.build import build_diffusion, build_timestep_sampler, build_unet
from iddpm.data.loader import ImageBatches
from iddpm.presets import get_preset
from iddpm.train.evaluate import EvalSet, PeriodicEvaluator
from iddpm.train.trainer import Trainer
from iddpm.workflows.monitor import _score_fn


def _trainer(cfg, batch: int) -> Trainer:
    m = cfg.model
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (max(batch, 64), m.image_size, m.image_size, m.in_channels))
    batches = ImageBatches(pixels.astype(np.uint8), None, batch, seed=0)
    cfg = cfg.replace(train=cfg.train.replace(batch_size=batch))
    torch.manual_seed(0)
    return Trainer(
        build_unet(cfg.model),
        build_diffusion(cfg.diffusion),
        batches,
        build_timestep_sampler(cfg.diffusion),
        cfg,
        device="cpu",
    )


def _evaluator(cfg, n: int) -> PeriodicEvaluator:
    m = cfg.model
    gen = torch.Generator().manual_seed(1)
    shape = (n, m.in_channels, m.image_size, m.image_size)
    sets = [
        EvalSet(torch.randint(0, 256, shape, generator=gen).float() / 127.5 - 1) for _ in range(2)
    ]
    tc = cfg.train
    return PeriodicEvaluator(*sets, every=tc.eval_every, timesteps=tc.eval_timesteps, seed=0)


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench(name: str, rounds: int, steps: int, batch: int | None, eval_images: int | None):
    cfg = get_preset(name)
    tc = cfg.train
    batch = batch or tc.batch_size
    n_eval = eval_images or tc.eval_images
    trainer = _trainer(cfg, batch)
    evaluator = _evaluator(cfg, n_eval)
    fid = None
    if tc.fid_every:
        fid = _score_fn(cfg, Path(tempfile.mkdtemp()), torch.device("cpu"))
        fid(trainer.inference_state_dict(), 0)  # warm-up: the reference features, once
    trainer.step()  # warm-up
    evaluator._bound(trainer, trainer.inference_state_dict())
    step_s, eval_s, fid_s = [], [], []
    for _ in range(rounds):
        step_s.append(_seconds(lambda: [trainer.step() for _ in range(steps)]) / steps)
        eval_s.append(_seconds(lambda: evaluator._bound(trainer, trainer.inference_state_dict())))
        if fid is not None:
            fid_s.append(_seconds(lambda: fid(trainer.inference_state_dict(), 0)))
    step, ev = statistics.median(step_s), statistics.median(eval_s)
    scale_step, scale_eval = tc.batch_size / batch, tc.eval_images / n_eval
    per_step = step * scale_step
    per_eval = ev * scale_eval
    fid_med = statistics.median(fid_s) if fid_s else 0.0
    eval_frac = per_eval / tc.eval_every / per_step if tc.eval_every else 0.0
    fid_frac = fid_med / tc.fid_every / per_step if tc.fid_every else 0.0
    return {
        "preset_batch": tc.batch_size,
        "measured_batch": batch,
        "preset_eval_images": tc.eval_images,
        "measured_eval_images": n_eval,
        "eval_timesteps": tc.eval_timesteps,
        "eval_every": tc.eval_every,
        "fid_every": tc.fid_every,
        "fid_samples": tc.fid_samples if tc.fid_every else None,
        "s_per_step_measured": step,
        "s_per_eval_measured": ev,
        "s_per_fid": fid_med or None,
        "s_per_step_at_preset": per_step,
        "s_per_eval_at_preset": per_eval,
        "eval_overhead": eval_frac,
        "fid_overhead": fid_frac,
        "overhead_at_defaults": eval_frac + fid_frac,
        "target": 0.05,
        "rounds": rounds,
        "steps_per_round": steps,
        "all_step_s": step_s,
        "all_eval_s": eval_s,
        "all_fid_s": fid_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="digits,cifar10")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="training steps per round (digits)")
    ap.add_argument("--cifar-batch", type=int, default=4)
    ap.add_argument("--cifar-eval-images", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    set_threads(args.threads)
    out = result_header("bench_train_eval", "cpu")
    for name in args.models.split(","):
        if name == "cifar10":
            out[name] = bench(name, args.rounds, 2, args.cifar_batch, args.cifar_eval_images)
        else:
            out[name] = bench(name, args.rounds, args.steps, None, None)
    out["loadavg_1min_at_end"] = round(__import__("os").getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
