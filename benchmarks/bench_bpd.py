"""Throughput of the full bound (`bits_per_dim`): one step per call vs many; prints one JSON.

    python benchmarks/bench_bpd.py                         # CPU: 1×8×8 images, T = 1000
    python benchmarks/bench_bpd.py --device cuda --channels 3 --image-size 16 --images 64

Measured in one run with the same small conv network and the same images:
- `sequential`: timestep_batch = 1, one network call of N inputs per step (T calls);
- `batched`: timestep_batch = k, one call of N·k inputs for k steps (T/k calls);
each as `image_steps_per_s` (images × timesteps evaluated per second, best of
`--repeats`), and `speedup` = batched / sequential. Both runs give the same bound (the
noise for step t does not depend on the chunking); `max_abs_diff_bpd` checks it.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from _common import cosine_learned_range, wall_seconds
from iddpm.diffusion.likelihood import bits_per_dim


class SmallConv(nn.Module):
    """Four 3×3 convs with an additive timestep embedding; 2C outputs (learned variance)."""

    def __init__(self, channels: int, width: int, num_timesteps: int) -> None:
        super().__init__()
        self.scale = 1.0 / num_timesteps
        self.temb = nn.Linear(1, width)
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.body = nn.Sequential(
            nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
            nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
            nn.SiLU(),
        )  # fmt: skip
        self.out = nn.Conv2d(width, 2 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.temb(t.to(x.dtype).unsqueeze(1) * self.scale)[:, :, None, None]
        return 0.1 * self.out(self.body(self.inp(x) + emb))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--image-size", type=int, default=8)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--timesteps", type=int, default=1000)
    ap.add_argument("--timestep-batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    diffusion = cosine_learned_range(args.timesteps)
    net = SmallConv(args.channels, args.width, args.timesteps).to(device).eval()
    shape = (args.images, args.channels, args.image_size, args.image_size)
    levels = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0))
    x0 = (levels.to(torch.float32) / 127.5 - 1.0).to(device)

    def run(k: int):
        gen = torch.Generator(device=device).manual_seed(1)
        return bits_per_dim(net, diffusion, x0, timestep_batch=k, generator=gen)

    run(args.timestep_batch)  # warm-up (allocator, kernels)
    results, seconds = {}, {}
    for name, k in (("sequential", 1), ("batched", args.timestep_batch)):
        times = []
        for _ in range(args.repeats):
            out: dict = {}
            times.append(wall_seconds(lambda k=k, out=out: out.update(r=run(k)), device))
            results[name] = out["r"]
        seconds[name] = min(times)
    work = args.images * args.timesteps
    rates = {name: work / s for name, s in seconds.items()}
    diff = (results["sequential"].total_bpd - results["batched"].total_bpd).abs().max()
    print(
        json.dumps(
            {
                "benchmark": "bits_per_dim",
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
                "image_shape": list(shape[1:]),
                "images": args.images,
                "num_timesteps": args.timesteps,
                "timestep_batch": args.timestep_batch,
                "sequential_image_steps_per_s": round(rates["sequential"], 1),
                "batched_image_steps_per_s": round(rates["batched"], 1),
                "speedup": round(rates["batched"] / rates["sequential"], 2),
                "sequential_s": round(seconds["sequential"], 3),
                "batched_s": round(seconds["batched"], 3),
                "mean_bpd": round(float(results["batched"].total_bpd.mean()), 4),
                "max_abs_diff_bpd": float(diff),
            }
        )
    )


if __name__ == "__main__":
    main()
