"""Full training-step throughput through `Trainer.step()`; prints one JSON object.

    python benchmarks/bench_train_step.py                 # CPU: digits and CIFAR-10 presets
    python benchmarks/bench_train_step.py --compile       # adds torch.compile variants (slow)
    python benchmarks/bench_train_step.py --device cuda --cifar-batch 128

A step is everything the trainer does: t and per-example noise draws, the hybrid loss
with learned-range variance (PAPER.md P11), backward, AdamW, EMA and the timestep-sampler
update. Models: the `digits` preset's UNet at batch 64 and the paper's CIFAR-10 UNet
(52.5M parameters) at batch 8 (CPU-sized; pass --cifar-batch for a GPU).

Variants: `fp32` (eager), `channels_last`, `bf16` (autocast), `bf16_channels_last`, plus
`compile` and `bf16_compile` (channels_last) with --compile. A `model_only_fp32` row times
the bare UNet forward + mean-square + backward at the same batch, so the trainer's own
overhead shows as `trainer_overhead` = fp32 step / model-only step. Variants are
interleaved step by step (a noisy machine slows them alike); figures are medians.

Per variant: `s_per_step`, `images_per_s`, `gflops` (FLOPs of one fp32 trainer step,
counted with torch.utils.flop_counter, divided by the wall time), `frac_of_peak` (against
an n×n matmul in the same dtype measured in this run) and `speedup_vs_fp32`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import (
    add_model_options,
    default_device,
    matmul_peaks,
    result_header,
    selected_models,
    set_threads,
    sync,
    wall_seconds,
)
from iddpm.build import build_diffusion, build_timestep_sampler, build_unet
from iddpm.config import ExperimentConfig
from iddpm.train.trainer import Trainer

VARIANTS = {  # name: (channels_last, precision, compile)
    "fp32": (False, "fp32", False),
    "channels_last": (True, "fp32", False),
    "bf16": (False, "bf16", False),
    "bf16_channels_last": (True, "bf16", False),
}
COMPILED = {"compile": (True, "fp32", True), "bf16_compile": (True, "bf16", True)}


def _batches(cfg: ExperimentConfig, batch: int, device: torch.device) -> Iterator[dict]:
    g = torch.Generator().manual_seed(0)
    m = cfg.model
    x0 = torch.randint(0, 256, (batch, m.in_channels, m.image_size, m.image_size), generator=g)
    x0 = (x0.float() / 127.5 - 1.0).to(device)
    while True:
        yield {"x0": x0}


def _trainer(cfg: ExperimentConfig, batch: int, variant: tuple, device: torch.device) -> Trainer:
    channels_last, precision, compile_ = variant
    train = cfg.train.replace(
        batch_size=batch,
        microbatch=0,
        precision=precision,
        channels_last=channels_last,
        compile=compile_,
        log_every=10**9,
    )
    cfg = cfg.replace(train=train)
    torch.manual_seed(0)
    return Trainer(
        build_unet(cfg.model),
        build_diffusion(cfg.diffusion),
        _batches(cfg, batch, device),
        build_timestep_sampler(cfg.diffusion),
        cfg,
        device=device,
        progress=False,
    )


def _model_only(cfg: ExperimentConfig, batch: int, device: torch.device) -> Callable[[], None]:
    torch.manual_seed(0)
    model = build_unet(cfg.model).to(device)
    m = cfg.model
    x = torch.randn(batch, m.in_channels, m.image_size, m.image_size, device=device)
    t = torch.rand(batch, device=device) * 1000
    params = list(model.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        model(x, t).square().mean().backward()

    return step


def bench_model(cfg: ExperimentConfig, batch: int, args: argparse.Namespace, peaks: dict) -> dict:
    device = torch.device(args.device)
    variants = VARIANTS | (COMPILED if args.compile else {})
    steps: dict[str, Callable[[], None]] = {"model_only_fp32": _model_only(cfg, batch, device)}
    warm_s: dict[str, float] = {}
    for name, variant in variants.items():
        steps[name] = _trainer(cfg, batch, variant, device).step
    for name, step in steps.items():
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step()
        sync(device)
        warm_s[name] = round(time.perf_counter() - t0, 2)
    wall: dict[str, list[float]] = {n: [] for n in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            wall[name].append(wall_seconds(step, device))
    counted = _trainer(cfg, batch, VARIANTS["fp32"], device)
    with FlopCounterMode(display=False) as counter:
        counted.step()
    gflop = counter.get_total_flops() / 1e9
    out: dict = {
        "params": sum(p.numel() for p in counted.module.parameters()),
        "batch": batch,
        "gflop_per_step": round(gflop, 2),
    }
    base = statistics.median(wall["fp32"])
    out["trainer_overhead"] = round(base / statistics.median(wall["model_only_fp32"]), 3)
    for name in steps:
        s = statistics.median(wall[name])
        precision = variants[name][1] if name in variants else "fp32"
        peak = peaks["bf16" if precision == "bf16" else "fp32"]
        out[name] = {
            "s_per_step": round(s, 4),
            "images_per_s": round(batch / s, 1),
            "gflops": round(gflop / s, 1),
            "frac_of_peak": round(gflop / s / peak, 3),
            "speedup_vs_fp32": round(base / s, 2),
            "warmup_s": warm_s[name],
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_model_options(p, device=default_device(), steps=3, warmup=1)
    args = p.parse_args()
    set_threads(args.threads)
    peaks = matmul_peaks(torch.device(args.device), reps=5)
    result = result_header("train_step", args.device)
    result["matmul_peak_gflops"] = peaks
    for name, cfg, batch in selected_models(args):
        result[name] = bench_model(cfg, batch, args, peaks)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
