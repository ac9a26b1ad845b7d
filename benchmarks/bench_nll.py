"""Cost of bits/dim: the exact bound vs the unbiased Monte-Carlo estimate; prints one JSON.

    python benchmarks/bench_nll.py                          # untrained digits-preset UNet
    python benchmarks/bench_nll.py --checkpoint runs/demo   # a trained model (meaningful)

Measured in one run on the first `--images` test digits:
- `exact`: `bits_per_dim` with all T terms, as images × timesteps per second;
- `mc`: `estimate_bits_per_dim` with K stratified timesteps per image; from its per-image
  spread we derive how many network evaluations the estimate needs for a standard error
  of `--target` bits/dim on the mean over `--dataset-size` images, and report that cost
  relative to the exact bound on the same images (`mc_cost_ratio` < 1: cheaper).
The images' own spread is common to both methods (the exact bound of a finite test set
has it too), so the comparison uses the Monte-Carlo part of the variance only: the
variance of the estimate around each image's exact bound.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from _common import result_header, set_threads
from iddpm._tensor import to_model_range
from iddpm.build import build_unet, load_model, spaced
from iddpm.data.bundled import load_digits
from iddpm.diffusion.likelihood import bits_per_dim
from iddpm.diffusion.likelihood_mc import estimate_bits_per_dim
from iddpm.presets import get_preset


def mc_cost(model_fn, diffusion, x0, method: str, args) -> dict:
    """Time and Monte-Carlo spread of K-step estimates, and the K a target stderr needs."""
    start = time.perf_counter()
    draws = torch.stack([
        estimate_bits_per_dim(model_fn, diffusion, x0, num_samples_per_image=args.mc_timesteps,
                              method=method, timestep_batch=args.timestep_batch,
                              generator=torch.Generator().manual_seed(1 + r)).total_bpd
        for r in range(args.mc_repeats)
    ])  # fmt: skip
    seconds = (time.perf_counter() - start) / args.mc_repeats
    # Monte-Carlo variance of a K-term estimate per image, around its own mean (pooled);
    # variance × K is about constant in K, and the mean over n images has variance var_K / n.
    var_k = float(draws.var(dim=0, unbiased=True).mean())
    k_needed = math.ceil(max(1.0, var_k * args.mc_timesteps / (args.dataset_size * args.target**2)))
    return {
        "timesteps_per_image": args.mc_timesteps,
        "seconds": round(seconds, 3),
        "bpd_mean": round(float(draws.mean()), 4),
        "mc_sd_per_image": round(math.sqrt(var_k), 4),
        "timesteps_needed_per_image": k_needed,
        "cost_ratio_vs_exact": round(k_needed / diffusion.num_timesteps, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="run dir or .pt (default: untrained)")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--mc-timesteps", type=int, default=16, help="K per image")
    p.add_argument("--mc-repeats", type=int, default=4, help="independent MC draws per image")
    p.add_argument("--timestep-batch", type=int, default=50)
    p.add_argument("--target", type=float, default=0.01, help="standard error, bits/dim")
    p.add_argument("--dataset-size", type=int, default=355, help="images in the evaluated set")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    set_threads(args.threads)
    if args.checkpoint:
        loaded = load_model(args.checkpoint)
        model, dcfg = loaded.model, loaded.config.diffusion
    else:
        cfg = get_preset("digits")
        torch.manual_seed(0)
        model, dcfg = build_unet(cfg.model).eval(), cfg.diffusion
    diffusion, model_fn = spaced(model, dcfg, "")
    T = diffusion.num_timesteps
    x0 = to_model_range(load_digits("test").images[: args.images])

    start = time.perf_counter()
    exact = bits_per_dim(model_fn, diffusion, x0, timestep_batch=args.timestep_batch,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    exact_s = time.perf_counter() - start

    n = args.dataset_size
    result = {
        **result_header("nll", "cpu"),
        "num_timesteps": T,
        "images": args.images,
        "exact": {
            "seconds": round(exact_s, 3),
            "image_steps_per_s": round(args.images * T / exact_s, 1),
            "bpd_mean": round(float(exact.total_bpd.mean()), 4),
        },
        "target_stderr_bpd": args.target,
        "dataset_size": n,
    }
    for method in ("stratified", "log-stratified"):
        result[method] = mc_cost(model_fn, diffusion, x0, method, args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
