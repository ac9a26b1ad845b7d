"""The noise-aware classifier p_φ(y | x_t, t) of classifier guidance (Dhariwal & Nichol
2021, §4): the UNet's downsampling half and middle, built by the same functions as the
UNet's (`model/unet.py`), then GroupNorm, SiLU, a global average pool and a zero-initialised
linear head, so an untrained classifier says "uniform". The timestep embedding conditions
every ResBlock as in the UNet; the labels are targets, never inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from iddpm.config import UNetConfig
from iddpm.model.layers import GroupNorm32, TimestepEmbedder, zero_module
from iddpm.model.unet import _check_attention_sizes, build_encoder, build_middle


class NoiseAwareClassifier(nn.Module):
    """forward(x_t [N, in_channels, H, W] float, timesteps [N] on the model's scale)
    -> logits [N, num_classes] float32 (log p_φ(y | x_t, t) up to a constant per row)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        if not cfg.classifier or cfg.num_classes is None:
            raise ValueError("NoiseAwareClassifier needs a config with classifier=True")
        _check_attention_sizes(cfg)
        self.cfg = cfg
        mc = cfg.model_channels
        self.time_embed = TimestepEmbedder(mc, 4 * mc)
        self.stem = nn.Conv2d(cfg.in_channels, mc, 3, padding=1)
        self.encoder, chans, _ = build_encoder(cfg)
        self.mid_res1, self.mid_attn, self.mid_res2 = build_middle(cfg, chans[-1])
        self.head_norm = GroupNorm32(cfg.num_groups, chans[-1])
        self.head = zero_module(nn.Linear(chans[-1], cfg.num_classes))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2:] != (cfg.image_size,) * 2:
            raise ValueError(
                f"the classifier expects x of shape [N, {cfg.in_channels}, {cfg.image_size}, "
                f"{cfg.image_size}], got {tuple(x.shape)}"
            )
        if timesteps.shape != (x.shape[0],):
            raise ValueError(
                f"timesteps must have shape [{x.shape[0]}], got {tuple(timesteps.shape)}"
            )
        emb_act = F.silu(self.time_embed(timesteps))
        h = self.stem(x)
        for block in self.encoder:
            h = block(h, emb_act)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb_act)), emb_act)
        pooled = F.silu(self.head_norm(h)).float().mean(dim=(2, 3))
        return self.head(pooled.to(self.head.weight.dtype)).float()
