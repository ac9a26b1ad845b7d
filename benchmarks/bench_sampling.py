"""Sampling throughput and the sampler's own per-step cost; prints one JSON object.

    python benchmarks/bench_sampling.py --threads 1      # CPU, small digits-sized UNet
    python benchmarks/bench_sampling.py --device cuda --image-size 32 --channels 3 \
        --model-channels 128 --batch 256

Measured in one run, per step of a `--steps`-strided process (default 50 of T = 4000):
- `net_ms`: one network call alone (the floor);
- `loop_trivial_ms`: one ancestral step with a model that returns zeros (the sampler's
  overhead: table look-ups, p_mean_variance, noise);
- `loop_net_ms`: one ancestral step with the network behind a ModelAdapter;
- `overhead_ratio` = loop_trivial_ms / net_ms, and `overhead_ratio_by_difference` =
  (loop_net_ms − net_ms) / net_ms as a cross-check;
- `images_per_s` (ancestral, and DDIM η = 0) at that number of steps;
- `loop_trivial_per_sample_generators_ms`: the trivial loop with one generator per sample.

The network is iddpm.model.unet.UNet when it is importable, else a small conv stack.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable

import torch
from torch import nn

from _common import cosine_learned_range, default_device, set_threads, wall_seconds
from iddpm.diffusion.respace import spaced_model
from iddpm.diffusion.samplers import ancestral, ddim, per_sample_generators


class ConvStack(nn.Module):
    """Fallback network: a few 3×3 convs with an additive timestep embedding."""

    def __init__(self, in_ch: int, width: int, out_ch: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(in_ch, width, 3, padding=1)
        self.temb = nn.Linear(1, width)
        self.body = nn.Sequential(
            *[
                m
                for _ in range(4)
                for m in (nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 3, padding=1))
            ]
        )
        self.out = nn.Conv2d(width, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.temb(t.float()[:, None] / 1000.0)[:, :, None, None]
        return self.out(self.body(h))


def build_network(args: argparse.Namespace) -> tuple[nn.Module, str]:
    out_ch = 2 * args.channels  # learned variance: 2C outputs
    try:
        from iddpm.config import UNetConfig
        from iddpm.model.unet import UNet
    except ImportError:
        return ConvStack(args.channels, args.model_channels, out_ch), "conv-stack"
    mult = (1, 2) if args.image_size <= 16 else (1, 2, 2, 2)
    cfg = UNetConfig(
        image_size=args.image_size,
        in_channels=args.channels,
        model_channels=args.model_channels,
        out_channels=out_ch,
        num_res_blocks=args.num_res_blocks,
        attention_resolutions=(args.image_size // 2,),
        channel_mult=mult,
        num_heads=4,
        num_groups=min(32, args.model_channels),
    )
    return UNet(
        cfg
    ), f"unet(ch={args.model_channels}, res_blocks={args.num_res_blocks}, mult={mult})"


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall-clock seconds of fn() over `repeats` runs, after one warm-up run."""
    fn()
    return statistics.median(wall_seconds(fn, device) for _ in range(repeats))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=default_device())
    p.add_argument("--steps", default="50", help="step spec of the strided process")
    p.add_argument("--diffusion-steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image-size", type=int, default=8)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--model-channels", type=int, default=32)
    p.add_argument("--num-res-blocks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    args = p.parse_args()
    set_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    net, net_name = build_network(args)
    net = net.to(device).eval()
    base = cosine_learned_range(args.diffusion_steps)
    diffusion, model = spaced_model(net, base, args.steps, rescale_timesteps=True)
    K = diffusion.num_timesteps
    shape = (args.batch, args.channels, args.image_size, args.image_size)
    x = torch.randn(shape, device=device)
    t = torch.full((args.batch,), K - 1, dtype=torch.int64, device=device)

    def trivial(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x_t.shape[0], 2 * x_t.shape[1], *x_t.shape[2:], device=x_t.device)

    def net_calls() -> None:
        with torch.no_grad():
            for _ in range(K):
                model(x, t)

    def run(fn, sampler=ancestral, gen=None) -> Callable[[], object]:
        g = gen if gen is not None else torch.Generator(device).manual_seed(0)
        return lambda: sampler(fn, diffusion, shape=shape, generator=g, device=device)

    per_sample = per_sample_generators(0, range(args.batch), device)
    net_s = timed(net_calls, device, args.repeats) / K
    trivial_s = timed(run(trivial), device, args.repeats) / K
    trivial_ps_s = timed(run(trivial, gen=per_sample), device, args.repeats) / K
    loop_s = timed(run(model), device, args.repeats) / K
    ddim_s = timed(run(model, sampler=ddim), device, args.repeats) / K

    print(
        json.dumps(
            {
                "benchmark": "sampling",
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
                "network": net_name,
                "parameters": sum(q.numel() for q in net.parameters()),
                "shape": list(shape),
                "diffusion_steps": args.diffusion_steps,
                "sampling_steps": K,
                "images_per_s": args.batch / (loop_s * K),
                "ddim_images_per_s": args.batch / (ddim_s * K),
                "net_ms": 1e3 * net_s,
                "loop_net_ms": 1e3 * loop_s,
                "loop_trivial_ms": 1e3 * trivial_s,
                "loop_trivial_per_sample_generators_ms": 1e3 * trivial_ps_s,
                "overhead_ratio": trivial_s / net_s,
                "overhead_ratio_by_difference": (loop_s - net_s) / net_s,
            }
        )
    )


if __name__ == "__main__":
    main()
