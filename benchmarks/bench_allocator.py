"""The command line's allocator settings (iddpm/cli/_startup.py) on/off; prints one JSON.

    python benchmarks/bench_allocator.py                       # digits + CIFAR-10, 5 rounds
    python benchmarks/bench_allocator.py --works train_digits,sample_digits --rounds 9

mallopt acts on the whole process, so the variants cannot be interleaved inside one:
each round runs every workload once per variant in its own subprocess, alternating the
order from round to round, and the figures are medians over rounds of each child's
median step time. Variants: `tuned` (the CLI's default start-up) and `glibc`
(IDDPM_MALLOC=off: glibc's own thresholds). Workloads, all with the digits preset's or
the paper's CIFAR-10 UNet (random weights; the allocator sees the same buffers):
- `train_digits` / `train_cifar10`: one `Trainer.step()` (default precision) at batch
  64 / 8;
- `sample_digits`: one ancestral step (network + sampler math, no gradients) at batch 64;
- `nll_digits`: one bits/dim call (16 timesteps × 64 images = 1024 inputs, exact decoder).
`speedup` = glibc / tuned (> 1: the tuned allocator is faster). `--variants` adds
`mmap_only` / `trim_only` (one of the two settings, through glibc's environment).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

WORKS = ("train_digits", "train_cifar10", "sample_digits", "nll_digits")
VARIANTS = {
    "tuned": {},
    "glibc": {"IDDPM_MALLOC": "off"},
    # the two settings alone (glibc reads them from the environment at start-up)
    "mmap_only": {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)},
    "trim_only": {"MALLOC_TRIM_THRESHOLD_": str(2**30)},
}


def child(work: str, iters: int, threads: int) -> dict:
    """Run `work` in this (fresh) process: start-up first, then torch; median seconds."""
    from iddpm.cli._startup import MALLOC  # noqa: I001  (before torch loads)

    import torch

    if threads:
        torch.set_num_threads(threads)
    step = _workload(work)
    step()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "malloc": MALLOC}


def _workload(work: str):
    import torch

    from iddpm.build import build_diffusion, build_timestep_sampler, build_unet, spaced
    from iddpm.diffusion.likelihood import bits_per_dim
    from iddpm.diffusion.samplers import ancestral_steps
    from iddpm.presets import get_preset
    from iddpm.train.trainer import Trainer

    kind, model_name = work.split("_", 1)
    cfg = get_preset(model_name)
    m = cfg.model
    torch.manual_seed(0)
    model = build_unet(m)
    with torch.no_grad():  # non-zero weights everywhere, so no path is trivially zero
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.02)
    batch = 8 if model_name == "cifar10" else 64
    shape = (batch, m.in_channels, m.image_size, m.image_size)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.randint(0, 256, shape, generator=g).float() / 127.5 - 1.0).contiguous()
    if kind == "train":
        cfg = cfg.replace(train=cfg.train.replace(batch_size=batch, log_every=10**9))
        batches = iter(lambda: {"x0": x0}, None)
        trainer = Trainer(
            model, build_diffusion(cfg.diffusion), batches, build_timestep_sampler(cfg.diffusion),
            cfg, device="cpu",
        )  # fmt: skip
        return trainer.step
    # sampling: one step of a 100-step process; bits/dim: a 16-step process, one call
    diffusion, model_fn = spaced(model.eval(), cfg.diffusion, "100" if kind == "sample" else "16")
    if kind == "sample":

        def sample_step() -> None:
            with torch.no_grad():
                steps = ancestral_steps(model_fn, diffusion, shape=shape, generator=g)
                next(iter(steps))

        return sample_step
    return lambda: bits_per_dim(model_fn, diffusion, x0, timestep_batch=16, generator=g)


def parent(args: argparse.Namespace) -> dict:
    works = args.works.split(",")
    seen: dict[str, str] = {}
    chosen = args.variants.split(",")
    times: dict[str, dict[str, list[float]]] = {w: {v: [] for v in chosen} for w in works}
    for r in range(args.rounds):
        order = chosen if r % 2 == 0 else list(reversed(chosen))
        for work in works:
            for variant in order:
                env = {k: v for k, v in os.environ.items() if k != "IDDPM_MALLOC"}
                env.update(VARIANTS[variant])
                cmd = [sys.executable, __file__, "--child", work, "--iters", str(args.iters)]
                cmd += ["--threads", str(args.threads)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                res = json.loads(out.stdout.strip().splitlines()[-1])
                times[work][variant].append(res["median_s"])
                seen[variant] = res["malloc"]
    result: dict = {
        "benchmark": "allocator",
        "rounds": args.rounds,
        "iters": args.iters,
        "threads": args.threads,
        "loadavg_1min_at_start": args.load,
        "malloc_state": seen,
    }
    for work, per in times.items():
        med = {v: statistics.median(ts) for v, ts in per.items()}
        result[work] = {f"{v}_s": round(s, 4) for v, s in med.items()}
        result[work]["speedup"] = round(med["glibc"] / med["tuned"], 3)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--works", default=",".join(WORKS), help=f"comma list of {', '.join(WORKS)}")
    p.add_argument("--variants", default="tuned,glibc", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=5, help="timed steps per child")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.iters, args.threads)))
        return
    args.load = round(os.getloadavg()[0], 2)
    print(json.dumps(parent(args)))


if __name__ == "__main__":
    main()
