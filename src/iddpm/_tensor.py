"""Small tensor helpers shared by the diffusion code (no iddpm imports)."""

from __future__ import annotations

import numpy as np
import torch


def broadcast_at(table: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Look up a per-step table at `t` and broadcast it to `x`.

    table: [T] float64 (already on x's device); t: [N] int64; x: [N, ...].
    Returns [N, 1, ..., 1] in x's dtype, so it broadcasts against x.
    """
    # index_select, not table[t]: advanced indexing is several times slower on CPU.
    vals = table.index_select(0, t).to(x.dtype)
    return vals.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first: [N, ...] -> [N]."""
    return x.mean(dim=tuple(range(1, x.ndim)))


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


def to_model_range(images) -> torch.Tensor:
    """uint8 images [N, H, W, C] (numpy or torch) -> float32 [N, C, H, W] in [−1, 1].

    Exactly x/127.5 − 1 (docs/paper.md, Conventions): 0 → −1 and 255 → +1, the 256 levels 2/255
    apart, so the discretised decoder sees bin centres.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(
            "to_model_range expects uint8 images [N, H, W, C], got "
            f"{getattr(x, 'dtype', type(x).__name__)} with shape "
            f"{tuple(getattr(x, 'shape', ()))}; decode to uint8 first"
        )
    return (x.permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1.0).contiguous()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Inverse of `to_model_range`: float [N, C, H, W] in [−1, 1] → uint8 [N, H, W, C].

    Rounds (x+1)·127.5 to the nearest level (ties to even, torch.round) and clips to
    [0, 255]; truncation would bias every pixel down by half a level.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"to_uint8 expects a float tensor [N, C, H, W], got "
            f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}"
        )
    levels = torch.round((x.detach().to(torch.float32) + 1.0) * 127.5).clamp_(0, 255)
    return levels.to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()
