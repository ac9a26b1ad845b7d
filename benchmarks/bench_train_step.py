"""Full training-step throughput through `Trainer.step()`; prints one JSON object.

    python benchmarks/bench_train_step.py                 # CPU: digits and CIFAR-10 presets
    python benchmarks/bench_train_step.py --compile       # adds torch.compile variants (slow)
    python benchmarks/bench_train_step.py --device cuda --cifar-batch 128
    IDDPM_MALLOC=off python benchmarks/bench_train_step.py   # glibc's allocator defaults

A step is everything the trainer does: t and per-example noise draws, the hybrid loss
with learned-range variance (docs/paper.md P11), backward, AdamW, EMA and the timestep-sampler
update. Models: the `digits` preset's UNet at batch 64 and the paper's CIFAR-10 UNet
(52.5M parameters) at batch 8 (CPU-sized; pass --cifar-batch for a GPU).

Variants (precision, attention kernel, GroupNorm, optimizer, channels_last, compile);
"as before" = the code before issue 11: GroupNorm on an upcast float32 copy, AdamW's
per-tensor loop instead of the fused kernel and nn.Dropout's bernoulli_ mask:
- `fp32`: the default before issue 11 (fp32, eager, SDPA, as before): every ratio's base;
- `bf16_before`: bf16 autocast as it was (SDPA, as before);
- `bf16_sdpa`: bf16 with today's GroupNorm and AdamW but SDPA forced (vs `default`: the
  attention rule alone);
- `fp32_einsum`: `fp32` with the einsum kernel forced (the rule's other side);
- `default`: what `iddpm train` runs now (--precision auto → `auto_resolves_to`, the
  attention kernel of `attention_kernel`, mixed-dtype GroupNorm);
- `default_channels_last`; with --compile also `default_compile` (channels_last).
A `model_only_fp32` row times the bare UNet forward + mean-square + backward at the same
batch (`trainer_overhead` = fp32 step / model-only step). The compiled variant's
`warmup_s` is its compile time (cold unless TORCHINDUCTOR_CACHE_DIR holds a cache).
Variants are interleaved step by step (a noisy machine slows them alike); figures are
medians.

The process's allocator cannot be switched inside one run: the script starts the way the
command line does (iddpm.cli._startup, `malloc` in the JSON); run it again with
IDDPM_MALLOC=off, or use bench_allocator.py, for that factor (today's = both off).

Per variant: `s_per_step`, `images_per_s`, `gflops` (FLOPs of one fp32 trainer step,
counted with torch.utils.flop_counter, divided by the wall time), `frac_of_peak` (against
an n×n matmul in the same dtype measured in this run) and `speedup_vs_fp32`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import types
from collections.abc import Callable, Iterator

from _common import (  # first: it runs the CLI's start-up before torch loads
    MALLOC,
    add_model_options,
    default_device,
    matmul_peaks,
    result_header,
    selected_models,
    set_threads,
    sync,
    wall_seconds,
)

# isort: split
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from iddpm.build import build_diffusion, build_timestep_sampler, build_unet
from iddpm.config import ExperimentConfig
from iddpm.model.layers import Dropout, GroupNorm32, SelfAttention2d
from iddpm.train.trainer import Trainer

VARIANTS = {  # name: (channels_last, precision, compile, attention kernel, as before)
    "fp32": (False, "fp32", False, "sdpa", True),
    "bf16_before": (False, "bf16", False, "sdpa", True),
    "bf16_sdpa": (False, "bf16", False, "sdpa", False),
    "fp32_einsum": (False, "fp32", False, "einsum", True),
    "default": (False, "auto", False, "auto", False),
    "default_channels_last": (True, "auto", False, "auto", False),
}
COMPILED = {"default_compile": (True, "auto", True, "auto", False)}


def _upcast_group_norm(self: GroupNorm32, x: torch.Tensor) -> torch.Tensor:
    """GroupNorm32 as it was before issue 11: an explicit float32 copy of the input."""
    w = None if self.weight is None else self.weight.float()
    b = None if self.bias is None else self.bias.float()
    return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def _set_kernels(model: torch.nn.Module, attention: str, before: bool) -> None:
    for m in model.modules():
        if isinstance(m, SelfAttention2d):
            m.kernel = attention
        if before and isinstance(m, GroupNorm32):
            m.forward = types.MethodType(_upcast_group_norm, m)
        if before and isinstance(m, Dropout):  # bernoulli_ masks, as nn.Dropout draws them
            m.forward = types.MethodType(torch.nn.Dropout.forward, m)


def _batches(cfg: ExperimentConfig, batch: int, device: torch.device) -> Iterator[dict]:
    g = torch.Generator().manual_seed(0)
    m = cfg.model
    x0 = torch.randint(0, 256, (batch, m.in_channels, m.image_size, m.image_size), generator=g)
    x0 = (x0.float() / 127.5 - 1.0).to(device)
    while True:
        yield {"x0": x0}


def _trainer(cfg: ExperimentConfig, batch: int, variant: tuple, device: torch.device) -> Trainer:
    channels_last, precision, compile_, attention, before = variant
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
    model = build_unet(cfg.model)
    _set_kernels(model, attention, before)
    loop_adamw = None
    if before:  # AdamW as the trainer built it before issue 11
        loop_adamw = torch.optim.AdamW(
            model.parameters(), lr=train.lr, weight_decay=train.weight_decay, foreach=False
        )
    return Trainer(
        model,
        build_diffusion(cfg.diffusion),
        _batches(cfg, batch, device),
        build_timestep_sampler(cfg.diffusion),
        cfg,
        optimizer=loop_adamw,
        device=device,
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
    resolved: dict[str, str] = {}
    for name, variant in variants.items():
        trainer = _trainer(cfg, batch, variant, device)
        steps[name], resolved[name] = trainer.step, trainer.precision.name
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
        "auto_resolves_to": resolved["default"],
    }
    base = statistics.median(wall["fp32"])
    out["trainer_overhead"] = round(base / statistics.median(wall["model_only_fp32"]), 3)
    for name in steps:
        s = statistics.median(wall[name])
        peak = peaks["bf16" if resolved.get(name, "fp32") == "bf16" else "fp32"]
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
    result["malloc"] = MALLOC
    result["matmul_peak_gflops"] = peaks
    for name, cfg, batch in selected_models(args):
        result[name] = bench_model(cfg, batch, args, peaks)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
