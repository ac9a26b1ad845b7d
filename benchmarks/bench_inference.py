"""Exact bits/dim and full-length sampling of a digits model: today vs now; prints one JSON.

    python benchmarks/bench_inference.py                        # random-weight digits UNet
    python benchmarks/bench_inference.py --checkpoint runs/demo --compile --bf16

Work, at equal numbers in every variant: the exact bound (all T = 1000 terms,
timestep_batch 16) of the first `--images` test digits, and `--images` samples of the
full T-step ancestral chain, from the same images and the same noise (seeded generators).

Variants, interleaved inside one process (bits/dim: image chunk by image chunk; sampling:
step by step), so a noisy machine slows them alike:
- `eager`: the float32 eager network (today's path, and still the default);
- `compiled` (--compile): build.inference_model(compile=True, cache_dir), float32;
- `bf16` (--bf16): the network under bf16 autocast, to measure what it would change:
  `sample_max_abs_diff` (final samples vs eager's from the same noise, in [-1, 1]) and
  `bf16_bpd_diff` (its mean bound − eager's; iddpm never computes bits/dim in bf16).
The allocator cannot change inside a process (bench_allocator.py), so each of `--rounds`
rounds runs one child with glibc's defaults (IDDPM_MALLOC=off: `today`, eager only) and
one with the command line's start-up (all variants), alternating their order. Figures
are medians over rounds; `speedup_*` are against `today`. Steady state: the first bits/dim
chunk and the first sampling step of every variant are warm-up, timed apart
(`bpd_first_chunk_s`, `sample_first_step_s`) and left out of the images/s (sampling
images/s = images / (mean step time × T)). `compile_first_call_s`: those first calls of
the compiled model (compiling) in the first round, with an empty inductor cache (`cold`),
and in later rounds with the cache the first one filled (`warm`).
`bpd_max_abs_diff`: largest |mean bits/dim − eager's| of today/compiled over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def child(args: argparse.Namespace) -> dict:
    from iddpm.cli._startup import MALLOC  # noqa: I001  (before torch loads)

    import torch

    from iddpm.build import build_unet, inference_model, load_model, spaced
    from iddpm.presets import get_preset

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        loaded = load_model(args.checkpoint)
        cfg, model = loaded.config, loaded.model
    else:
        cfg = get_preset("digits")
        torch.manual_seed(0)
        model = build_unet(cfg.model)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p) * 0.05)
    nets = {"eager": inference_model(model)}
    if "compiled" in args.variants:
        nets["compiled"] = inference_model(model, compile=True, cache_dir=args.cache_dir)
    if "bf16" in args.variants:
        nets["bf16"] = _autocast(model)
    x0 = _test_digits(args.images)
    out = {"malloc": MALLOC, "variants": {n: {} for n in nets}}
    _bits(nets, cfg, x0, args, out, spaced)
    _sampling(nets, cfg, x0.shape, out, spaced)
    return out


def _autocast(model):
    import torch

    def run(*a, **k):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(*a, **k).float()

    return run


def _test_digits(n: int):
    from iddpm._tensor import to_model_range
    from iddpm.data.bundled import load_digits

    ds = load_digits("test")
    return to_model_range(ds.images[:n])


def _bits(nets, cfg, x0, args, out, spaced) -> None:
    import torch

    from iddpm.diffusion.likelihood import bits_per_dim

    chunk = args.chunk
    totals = {n: [] for n in nets}
    seconds = dict.fromkeys(nets, 0.0)
    first = {}
    for lo in range(0, x0.shape[0], chunk):
        for name, net in nets.items():
            diffusion, model_fn = spaced(net, cfg.diffusion, "")
            gen = torch.Generator().manual_seed(lo)
            start = time.perf_counter()
            res = bits_per_dim(model_fn, diffusion, x0[lo : lo + chunk], generator=gen)
            if lo == 0:  # the first chunk warms up (and compiles): timed apart
                first[name] = time.perf_counter() - start
            else:
                seconds[name] += time.perf_counter() - start
            totals[name].append(res.total_bpd)
    for name in nets:
        bpd = float(torch.cat(totals[name]).mean())
        out["variants"][name] |= {
            "bpd_images_per_s": (x0.shape[0] - chunk) / seconds[name],
            "mean_bpd": bpd,
            "bpd_first_chunk_s": first[name],
        }


def _sampling(nets, cfg, shape, out, spaced) -> None:
    import torch

    from iddpm.diffusion.samplers import ancestral_steps, per_sample_generators

    loops, seconds, last, first = {}, dict.fromkeys(nets, 0.0), {}, {}
    for name, net in nets.items():
        diffusion, model_fn = spaced(net, cfg.diffusion, "")
        gens = per_sample_generators(0, range(shape[0]))
        loops[name] = ancestral_steps(model_fn, diffusion, shape=tuple(shape), generator=gens)
    num_t = cfg.diffusion.num_timesteps
    with torch.no_grad():
        for i in range(num_t):
            for name, loop in loops.items():
                start = time.perf_counter()
                last[name] = next(loop).x
                if i == 0:  # the first step warms up (and compiles): timed apart
                    first[name] = time.perf_counter() - start
                else:
                    seconds[name] += time.perf_counter() - start
    for name in nets:
        per_chain = seconds[name] / (num_t - 1) * num_t
        out["variants"][name] |= {
            "sample_images_per_s": shape[0] / per_chain,
            "sample_first_step_s": first[name],
            "sample_max_abs_diff": float((last[name] - last["eager"]).abs().max()),
        }


def _run_child(args: argparse.Namespace, malloc_off: bool, variants: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "IDDPM_MALLOC"}
    if malloc_off:
        env["IDDPM_MALLOC"] = "off"
    cmd = [sys.executable, __file__, "--child", "--variants", variants]
    for flag in ("images", "chunk", "threads", "cache_dir", "checkpoint"):
        value = getattr(args, flag)
        if value:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def parent(args: argparse.Namespace) -> dict:
    variants = ",".join(["eager"] + ["compiled"] * args.compile + ["bf16"] * args.bf16)
    args.cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="iddpm-inductor-")
    runs: dict[str, list[dict]] = {}
    for r in range(args.rounds):
        order = [(True, "eager"), (False, variants)]
        for off, names in order if r % 2 == 0 else reversed(order):
            res = _run_child(args, off, names)
            for name, row in res["variants"].items():
                runs.setdefault("today" if off else name, []).append(row)
    result: dict = {
        "benchmark": "inference",
        "images": args.images,
        "rounds": args.rounds,
        "threads": args.threads,
        "checkpoint": args.checkpoint,
        "loadavg_1min_at_start": args.load,
    }
    today = {k: statistics.median(r[k] for r in runs["today"]) for k in runs["today"][0]}
    for name, rows in runs.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        med["speedup_bpd"] = med["bpd_images_per_s"] / today["bpd_images_per_s"]
        med["speedup_sampling"] = med["sample_images_per_s"] / today["sample_images_per_s"]
        result[name] = {k: round(v, 5) for k, v in med.items()}
    if "compiled" in runs:
        firsts = [r["bpd_first_chunk_s"] + r["sample_first_step_s"] for r in runs["compiled"]]
        result["compile_first_call_s"] = {"cold": round(firsts[0], 1)}
        if len(firsts) > 1:
            result["compile_first_call_s"]["warm"] = round(statistics.median(firsts[1:]), 1)
    eager_bpd = [r["mean_bpd"] for r in runs["eager"]]
    diffs = {
        name: [r["mean_bpd"] - e for r, e in zip(rows, eager_bpd)] for name, rows in runs.items()
    }
    result["bpd_max_abs_diff"] = max(
        abs(d) for name, ds in diffs.items() if name != "bf16" for d in ds
    )
    if "bf16" in diffs:
        result["bf16_bpd_diff"] = statistics.median(diffs["bf16"])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--chunk", type=int, default=8, help="images per bits/dim call group")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--checkpoint", default="", help="a run directory or checkpoint")
    p.add_argument("--compile", action="store_true", help="add the compiled variant")
    p.add_argument("--bf16", action="store_true", help="add bf16-autocast sampling")
    p.add_argument("--cache-dir", default="", help="inductor cache (default: a fresh one)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variants", default="eager", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    args.load = round(os.getloadavg()[0], 2)
    print(json.dumps(parent(args)))


if __name__ == "__main__":
    main()
