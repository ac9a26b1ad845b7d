"""The paper's UNet (docs/paper.md, "The network"), built from a `UNetConfig`.

Layout, for L = len(channel_mult) resolution levels and R = num_res_blocks:

    stem conv ─▶ encoder: per level, R × [ResBlock (+ attention)], then a Downsample
                 (not after the last level); every encoder output is kept as a skip
             ─▶ middle: ResBlock, attention, ResBlock
             ─▶ decoder: per level (deepest first), R + 1 × [concat skip, ResBlock
                 (+ attention)], the last one of each level but the top followed by an
                 Upsample
             ─▶ head: GroupNorm, SiLU, zero-initialised 3×3 conv to out_channels.

Attention sits wherever the feature map is `attention_resolutions` pixels wide (16 and 8
for the 32×32 CIFAR-10 model) and always in the middle. The timestep embedding (and the
class embedding, when `num_classes` is set) conditions every ResBlock. The network never
sees β: it receives timesteps already on its own scale (0..1000 when rescaled).

Gradient checkpointing (`grad_checkpoint = True`, set by the trainer for
--grad-checkpoint): while gradients are being recorded, each encoder/decoder block and
each middle ResBlock and attention keeps only its inputs and recomputes its activations
in the backward pass (torch.utils.checkpoint, non-reentrant; the RNG state is restored
for the recomputation, so dropout masks and therefore gradients are bitwise the same).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from iddpm.config import UNetConfig
from iddpm.model.layers import (
    Downsample,
    GroupNorm32,
    ResBlock,
    SelfAttention2d,
    TimestepEmbedder,
    Upsample,
    zero_module,
)


class UNetBlock(nn.Module):
    """One step of the encoder or decoder: an optional ResBlock, an optional attention
    and an optional resampling, applied in that order. [N, C_in, H, W] -> [N, C_out, H', W']."""

    def __init__(
        self,
        res: ResBlock | None = None,
        attn: SelfAttention2d | None = None,
        resample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.res = res
        self.attn = attn
        self.resample = resample

    def forward(self, h: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        if self.res is not None:
            h = self.res(h, emb_act)
        if self.attn is not None:
            h = self.attn(h)
        if self.resample is not None:
            h = self.resample(h)
        return h


class UNet(nn.Module):
    """ε-prediction UNet (plus variance channels when out_channels = 2·in_channels).

    forward(x [N, in_channels, H, W] float, timesteps [N] int or float on the model's
    scale, y [N] int64 class labels iff the config has num_classes)
    -> [N, out_channels, H, W] in x's dtype (or the autocast dtype).
    H and W must be divisible by 2^(len(channel_mult) − 1).
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        _check_attention_sizes(cfg)
        self.cfg = cfg
        self.grad_checkpoint = False
        mc, emb_dim = cfg.model_channels, 4 * cfg.model_channels
        self.time_embed = TimestepEmbedder(mc, emb_dim)
        self.class_embed = nn.Embedding(cfg.num_classes, emb_dim) if cfg.num_classes else None
        self.stem = nn.Conv2d(cfg.in_channels, mc, 3, padding=1)

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(
                cin, cout, emb_dim, cfg.dropout, cfg.use_scale_shift_norm, cfg.num_groups
            )

        def attn(ch: int, size: int) -> SelfAttention2d | None:
            if size not in cfg.attention_resolutions:
                return None
            return SelfAttention2d(ch, cfg.num_heads, cfg.num_groups)

        # 1. encoder; skip_chans[i] = channels of the i-th kept activation (stem first)
        self.encoder = nn.ModuleList()
        ch, size, skip_chans = mc, cfg.image_size, [mc]
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.encoder.append(UNetBlock(res(ch, mult * mc), attn(mult * mc, size)))
                ch = mult * mc
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.encoder.append(UNetBlock(resample=Downsample(ch, cfg.conv_resample)))
                size //= 2
                skip_chans.append(ch)

        # 2. middle
        self.mid_res1 = res(ch, ch)
        self.mid_attn = SelfAttention2d(ch, cfg.num_heads, cfg.num_groups)
        self.mid_res2 = res(ch, ch)

        # 3. decoder, consuming the skips in reverse order
        self.decoder = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                block = res(ch + skip_chans.pop(), mult * mc)
                ch = mult * mc
                up = None
                if level and i == cfg.num_res_blocks:
                    up = Upsample(ch, cfg.conv_resample)
                self.decoder.append(UNetBlock(block, attn(ch, size), up))
                if up is not None:
                    size *= 2

        # 4. head
        self.head_norm = GroupNorm32(cfg.num_groups, ch)
        self.head_conv = zero_module(
            nn.Conv2d(ch, cfg.out_channels or cfg.in_channels, 3, padding=1)
        )

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        self._check_inputs(x, timesteps, y)
        emb = self.time_embed(timesteps)
        if self.class_embed is not None:
            emb = emb + self.class_embed(y)
        # Every ResBlock starts its embedding projection with SiLU: apply it once here.
        emb_act = F.silu(emb)

        h = self.stem(x)
        skips = [h]
        for block in self.encoder:
            h = self._run(block, h, emb_act)
            skips.append(h)
        h = self._run(self.mid_res1, h, emb_act)
        h = self._run(self.mid_attn, h)
        h = self._run(self.mid_res2, h, emb_act)
        for block in self.decoder:
            h = self._run(_concat_then(block), h, skips.pop(), emb_act)
        return self.head_conv(F.silu(self.head_norm(h)))

    def _run(self, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
        """fn(*args), checkpointed when `grad_checkpoint` is on and gradients are recorded."""
        if self.grad_checkpoint and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def _check_inputs(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None
    ) -> None:
        cfg = self.cfg
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"UNet expects x of shape [N, {cfg.in_channels}, H, W], got {tuple(x.shape)}; "
                "pass a batch of images with the configured in_channels"
            )
        down = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[2] % down or x.shape[3] % down:
            raise ValueError(
                f"image size {tuple(x.shape[2:])} is not divisible by {down} "
                f"({len(cfg.channel_mult)} resolution levels); pad or resize the input"
            )
        if timesteps.shape != (x.shape[0],):
            raise ValueError(
                f"timesteps must have shape [{x.shape[0]}] (one per image), "
                f"got {tuple(timesteps.shape)}"
            )
        if cfg.num_classes and y is None:
            raise ValueError(
                f"this UNet is class-conditional ({cfg.num_classes} classes); pass y, "
                "the [N] int64 class labels"
            )
        if not cfg.num_classes and y is not None:
            raise ValueError(
                "this UNet is unconditional but y was given; drop y or build it with num_classes"
            )
        if y is not None and y.shape != (x.shape[0],):
            raise ValueError(
                f"y must have shape [{x.shape[0]}] (one label per image), got {tuple(y.shape)}"
            )


def _concat_then(block: UNetBlock) -> Callable[..., torch.Tensor]:
    """A decoder step on (h, skip, emb_act): the channel concat happens inside it, so a
    checkpointed step keeps h and the skip (alive anyway) instead of their concat."""

    def run(h: torch.Tensor, skip: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        return block(torch.cat([h, skip], dim=1), emb_act)

    return run


def feature_sizes(cfg: UNetConfig) -> tuple[int, ...]:
    """Feature-map widths in pixels at each resolution level, e.g. (32, 16, 8, 4)."""
    return tuple(cfg.image_size // 2**level for level in range(len(cfg.channel_mult)))


def _check_attention_sizes(cfg: UNetConfig) -> None:
    sizes = feature_sizes(cfg)
    bad = sorted(set(cfg.attention_resolutions) - set(sizes))
    if bad:
        raise ValueError(
            f"attention_resolutions {bad} match no feature-map size {sizes} of this UNet; "
            "give sizes in pixels (16 and 8 at 32x32), not downsampling rates"
        )
