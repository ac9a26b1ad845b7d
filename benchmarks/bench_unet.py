"""UNet forward+backward throughput; prints one JSON object.

    python benchmarks/bench_unet.py                  # CPU: digits-sized and CIFAR-10 UNets
    python benchmarks/bench_unet.py --compile        # adds torch.compile variants (minutes)
    python benchmarks/bench_unet.py --device cuda --cifar-batch 128

For each model, one training-shaped step (forward, mean-square loss, backward; grads
reset to None between steps) is timed in each variant: `fp32` (eager, contiguous),
`channels_last`, `bf16` (autocast) and `bf16_channels_last`, plus `compile` and
`bf16_compile` (both channels_last) with `--compile`. Variants are interleaved step by
step so a noisy machine slows them alike; each figure is the median over `--steps`.

Reported per variant: `s_per_step` (wall), `cpu_s_per_step` (process CPU time; on a
shared machine cpu_s/threads well below s_per_step means we were descheduled),
`images_per_s`, `gflops` (achieved: FLOPs of one fp32 step counted with
torch.utils.flop_counter.FlopCounterMode, divided by the wall time) and `frac_of_peak`
(against the large fp32 or bf16 matmul measured in the same run), and
`speedup_vs_fp32`. The device's matmul peaks are under `matmul_peak_gflops`.

On a CPU shared with other busy processes, OpenMP threads that spin at barriers while a
sibling is descheduled can make multi-threaded steps many times slower (seen here: a
digits step 3.4 s with 2 threads, 0.13 s with OMP_WAIT_POLICY=PASSIVE, 0.08 s with 1
thread). Use `--threads 1` or set OMP_WAIT_POLICY=PASSIVE there; the JSON records both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from _common import (
    add_model_options,
    matmul_peaks,
    result_header,
    selected_models,
    set_threads,
    sync,
)
from iddpm.config import UNetConfig
from iddpm.model.unet import UNet


def _model(cfg: UNetConfig, device: torch.device, channels_last: bool) -> UNet:
    model = UNet(cfg).to(device)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero everywhere, so no path is trivially zero
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _step_fn(
    model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, bf16: bool
) -> Callable[[], None]:
    params = list(model.parameters())

    def step() -> None:
        for p in params:
            p.grad = None
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(x, t)
        out.float().square().mean().backward()

    return step


def count_step_gflop(cfg: UNetConfig, batch: int, device: torch.device) -> float:
    model = _model(cfg, device, channels_last=False)
    x, t = _inputs(cfg, batch, device, channels_last=False)
    with FlopCounterMode(display=False) as counter:
        _step_fn(model, x, t, bf16=False)()
    return counter.get_total_flops() / 1e9


def _inputs(cfg: UNetConfig, batch: int, device: torch.device, channels_last: bool):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device), t.to(device)


def bench_model(cfg: UNetConfig, batch: int, args: argparse.Namespace, peaks: dict) -> dict:
    device = torch.device(args.device)
    variants = {  # name: (channels_last, bf16, compile)
        "fp32": (False, False, False),
        "channels_last": (True, False, False),
        "bf16": (False, True, False),
        "bf16_channels_last": (True, True, False),
    }
    if args.compile:
        variants |= {"compile": (True, False, True), "bf16_compile": (True, True, True)}
    steps, compile_s = {}, {}
    for name, (cl, bf16, comp) in variants.items():
        model = _model(cfg, device, cl)
        if comp:
            model = torch.compile(model)
        x, t = _inputs(cfg, batch, device, cl)
        steps[name] = _step_fn(model, x, t, bf16)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            steps[name]()
        sync(device)
        if comp:
            compile_s[name] = round(time.perf_counter() - t0, 1)
    wall: dict[str, list[float]] = {n: [] for n in variants}
    cpu: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(args.steps):
        for name, step in steps.items():
            sync(device)
            c0, w0 = time.process_time(), time.perf_counter()
            step()
            sync(device)
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    gflop = count_step_gflop(cfg, batch, device)
    n_params = sum(p.numel() for p in UNet(cfg).parameters())
    out: dict = {"params": n_params, "batch": batch, "gflop_per_step": round(gflop, 2)}
    base = statistics.median(wall["fp32"])
    for name, (_, bf16, _) in variants.items():
        s = statistics.median(wall[name])
        peak = peaks["bf16" if bf16 else "fp32"]
        out[name] = {
            "s_per_step": round(s, 4),
            "cpu_s_per_step": round(statistics.median(cpu[name]), 4),
            "images_per_s": round(batch / s, 1),
            "gflops": round(gflop / s, 1),
            "frac_of_peak": round(gflop / s / peak, 3),
            "speedup_vs_fp32": round(base / s, 2),
        }
        if name in compile_s:
            out[name]["compile_and_warmup_s"] = compile_s[name]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_model_options(p, device="cpu", steps=5, warmup=2)
    args = p.parse_args()
    set_threads(args.threads)
    peaks = matmul_peaks(torch.device(args.device), reps=10)
    result = result_header("unet_forward_backward", args.device)
    result["matmul_peak_gflops"] = peaks
    for name, cfg, batch in selected_models(args):
        unet = cfg.model
        result[name] = {"config": unet.to_dict(), **bench_model(unet, batch, args, peaks)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
