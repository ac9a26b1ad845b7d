"""Peak training memory with and without gradient checkpointing; prints one JSON object.

    python benchmarks/bench_memory.py                          # CPU: CIFAR-10 and ImageNet-64
    python benchmarks/bench_memory.py --device cuda --batch 128

For each architecture (the `cifar10` and `imagenet64` presets' UNets) and each setting of
--grad-checkpoint, a fresh subprocess builds a `Trainer` (default precision, fused AdamW,
EMA) and takes `--steps` training steps at `--batch` (the first one allocates the
optimizer's moments). Reported:
- `peak_mb`: CPU: the process's peak resident set (ru_maxrss); CUDA: the peak of
  torch.cuda.max_memory_allocated over the steps after the first;
- `step_peak_mb` (CUDA only): that peak − the memory allocated before those steps
  (weights, EMA, optimizer moments, the last gradients): what a steady-state step adds;
- `s_per_step`: median wall time of the steps after the first.
`saved_mb` = plain − checkpointed peak (the same weights, optimizer and EMA in both),
`saved_frac` = saved_mb / the plain peak (of step_peak_mb on CUDA), `time_cost` =
checkpointed / plain step time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ARCHS = ("cifar10", "imagenet64")


def child(arch: str, checkpointing: bool, batch: int, steps: int, device_name: str) -> dict:
    from iddpm.cli._startup import MALLOC  # noqa: I001  (before torch loads)

    import torch

    from iddpm.build import build_diffusion, build_timestep_sampler, build_unet
    from iddpm.presets import get_preset
    from iddpm.train.trainer import Trainer

    device = torch.device(device_name)
    cfg = get_preset(arch)
    train = cfg.train.replace(batch_size=batch, grad_checkpoint=checkpointing, log_every=10**9)
    cfg = cfg.replace(train=train)
    m = cfg.model
    x0 = torch.rand(batch, m.in_channels, m.image_size, m.image_size, device=device) * 2 - 1
    torch.manual_seed(0)
    trainer = Trainer(
        build_unet(m), build_diffusion(cfg.diffusion), iter(lambda: {"x0": x0}, None),
        build_timestep_sampler(cfg.diffusion), cfg, device=device,
    )  # fmt: skip
    cuda = device.type == "cuda"
    times = []
    for i in range(steps):
        if cuda and i == 1:  # steady state: the optimizer's moments exist from here on
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device) / 2**20
        start = time.perf_counter()
        trainer.step()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    out = {"malloc": MALLOC, "precision": trainer.precision.name}
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        out |= {"peak_mb": peak, "step_peak_mb": peak - before}
    else:
        out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB
    out["s_per_step"] = statistics.median(times[1:])
    return out


def parent(args: argparse.Namespace) -> dict:
    result: dict = {
        "benchmark": "memory",
        "device": args.device,
        "batch": args.batch,
        "steps": args.steps,
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
    }
    for arch in args.archs.split(","):
        rows = {}
        for checkpointing in (False, True):
            cmd = [sys.executable, __file__, "--child", arch, "--batch", str(args.batch)]
            cmd += ["--steps", str(args.steps), "--device", args.device]
            cmd += ["--grad-checkpoint"] if checkpointing else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows["checkpointed" if checkpointing else "plain"] = json.loads(
                out.stdout.strip().splitlines()[-1]
            )
        plain, ckpt = rows["plain"], rows["checkpointed"]
        rows["saved_mb"] = round(plain["peak_mb"] - ckpt["peak_mb"], 1)
        key = "step_peak_mb" if "step_peak_mb" in plain else "peak_mb"
        rows["saved_frac"] = round(rows["saved_mb"] / plain[key], 3)
        rows["time_cost"] = round(ckpt["s_per_step"] / plain["s_per_step"], 3)
        result[arch] = rows
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="at least 2")
    p.add_argument("--grad-checkpoint", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        res = child(args.child, args.grad_checkpoint, args.batch, args.steps, args.device)
        print(json.dumps(res))
        return
    print(json.dumps(parent(args)))


if __name__ == "__main__":
    main()
