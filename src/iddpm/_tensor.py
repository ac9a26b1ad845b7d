"""Small tensor helpers shared by the diffusion code (no iddpm imports)."""

from __future__ import annotations

import torch


def broadcast_at(table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Look up a per-step table at `t` and broadcast it to `x`.

    table: [T] float64 (already on x's device); t: [N] int64; x: [N, ...].
    Returns [N, 1, ..., 1] in x's dtype, so it broadcasts against x.
    """
    vals = table[t].to(x.dtype)
    return vals.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: [N, ...] -> [N]."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def sum_flat(x: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first: [N, ...] -> [N]."""
    return x.sum(dim=tuple(range(1, x.ndim)))


def check_timesteps(t: torch.Tensor, num_timesteps: int, batch: int | None = None) -> None:
    """One-line ValueErrors for timesteps that are not int [N] in [0, T)."""
    if t.ndim != 1 or t.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(
            f"timesteps must be a 1-d integer tensor, got shape {tuple(t.shape)} dtype {t.dtype}; "
            "pass torch.long step indices"
        )
    if batch is not None and t.shape[0] != batch:
        raise ValueError(
            f"got {t.shape[0]} timesteps for a batch of {batch}; pass one timestep per example"
        )
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_timesteps):
        raise ValueError(
            f"timesteps must lie in [0, {num_timesteps}), got range "
            f"[{int(t.min())}, {int(t.max())}]; code step t stands for the paper's step t+1"
        )


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
            "they must match"
        )


def to_uint8_nhwc(x: torch.Tensor):
    """Model-range images [N, C, H, W] in [−1, 1] -> uint8 numpy [N, H, W, C].

    Rounds to the nearest level ((x + 1)·127.5, round, clip) instead of truncating, so
    x0 = v/127.5 − 1 maps back to exactly v.
    """
    levels = ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return levels.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def uint8_to_model(images) -> torch.Tensor:
    """uint8 [N, H, W, C] (numpy or tensor) -> float32 [N, C, H, W] in [−1, 1], exactly
    v/127.5 − 1 (PAPER.md, Conventions), so the discretised decoder's bins are exact."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(
            f"images must be uint8 [N, H, W, C], got {x.dtype} with shape {tuple(x.shape)}; "
            "decode to uint8 first"
        )
    return x.permute(0, 3, 1, 2).to(torch.float32).div(127.5).sub(1.0).contiguous()
