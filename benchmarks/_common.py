"""Pieces the benchmark scripts share: synchronized timing, the matmul peak, the JSON
header, the model-size options and the diffusion the sampling/bound benchmarks run.

Imported as `_common` by the scripts in this folder (`python benchmarks/bench_*.py` puts the
folder on sys.path); not part of the iddpm package.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

# The command line's start-up (OpenMP wait policy, allocator) must run before torch loads.
from iddpm.cli._startup import MALLOC

# isort: split
import torch

from iddpm.config import ExperimentConfig
from iddpm.diffusion import schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.presets import get_preset

# The two model sizes the throughput benchmarks time: the `digits` preset's UNet (0.76M
# parameters, 8×8 grayscale, learned sigma) and the paper's CIFAR-10 UNet (52.5M, dropout 0.3).
MODELS = ("digits", "cifar10")


def sync(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock readings cover it (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one synchronized call of `fn`."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, n: int, reps: int) -> float:
    """Best-of-`reps` GFLOP/s of an n×n @ n×n matmul (2n³ FLOPs)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    a @ b
    best = min(wall_seconds(lambda: a @ b, device) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def matmul_peaks(device: torch.device, reps: int) -> dict[str, float]:
    """fp32 and bf16 matmul peaks in GFLOP/s (n = 8192 on CUDA, 2048 elsewhere)."""
    n = 8192 if device.type == "cuda" else 2048
    return {
        "fp32": round(matmul_peak_gflops(device, torch.float32, n, reps), 1),
        "bf16": round(matmul_peak_gflops(device, torch.bfloat16, n, reps), 1),
    }


def result_header(name: str, device: str) -> dict:
    """First keys of a benchmark's JSON: what ran, where, and how busy the machine was.

    OMP_WAIT_POLICY is recorded because spinning OpenMP threads on a shared CPU can make
    multi-threaded steps many times slower (see bench_unet.py).
    """
    return {
        "benchmark": name,
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "malloc": MALLOC,
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
    }


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_model_options(p: argparse.ArgumentParser, *, device: str, steps: int, warmup: int) -> None:
    """The options of the per-model throughput benchmarks; the defaults are the caller's."""
    p.add_argument("--device", default=device)
    p.add_argument("--steps", type=int, default=steps, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed steps per variant")
    p.add_argument("--digits-batch", type=int, default=64)
    p.add_argument("--cifar-batch", type=int, default=8)
    p.add_argument("--models", default=",".join(MODELS), help="comma list: digits,cifar10")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--compile", action="store_true", help="add torch.compile variants")


def set_threads(threads: int) -> None:
    """`--threads N`: N intra-op threads; 0 keeps torch's default."""
    if threads:
        torch.set_num_threads(threads)


def selected_models(args: argparse.Namespace) -> list[tuple[str, ExperimentConfig, int]]:
    """(name, preset config, batch size) for each model named by `--models`."""
    batches = {"digits": args.digits_batch, "cifar10": args.cifar_batch}
    chosen = []
    for name in args.models.split(","):
        if name not in batches:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        chosen.append((name, get_preset(name), batches[name]))
    return chosen


def cosine_learned_range(num_timesteps: int) -> GaussianDiffusion:
    """The paper's improved process: cosine schedule, ε prediction, learned-range Σ."""
    return GaussianDiffusion(
        schedules.cosine(num_timesteps), MeanType.EPSILON, VarType.LEARNED_RANGE
    )
