"""UNet building blocks (docs/paper.md, "The network").

Every block takes and returns [N, C, H, W] tensors in either memory format
(contiguous or channels_last) and keeps the format it was given, so a model converted
with `.to(memory_format=torch.channels_last)` stays channels_last end to end. Under
autocast the convolutions and linears run in the low-precision dtype while GroupNorm
statistics, the sinusoidal embedding and the softmax of attention stay in float32.

Zero-initialised output layers (the last conv of each residual block, the attention
projection and the network's final conv) make a freshly built block the identity and
a freshly built UNet output exactly zero, as in the authors' implementation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of `module` to zero in place and return it."""
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    return module


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, max_period: float = 10000.0
) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    timesteps: [N], int or float, on the model's scale (0..1000 for rescaled timesteps).
    Returns [N, dim] float32: the COSINE half first, then the sine half, at frequencies
    max_period^(-i/half) for i = 0..half-1; a zero column is appended when dim is odd.
    The frequencies and the phases are computed in float32, as the authors' code does,
    so converted checkpoints reproduce its outputs (large t lose ~1e-4 of phase to
    float32 rounding; a trained model has learned with exactly that rounding).
    """
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponents)
    args = timesteps.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm whose statistics and affine are computed in float32 whatever the input
    dtype (bf16/fp16 autocast), then cast back to the input dtype. [N, C, ...] -> same.

    float32 input: one plain group_norm, no copies. bf16 on CPU: PyTorch's mixed-dtype
    kernel takes the bf16 input with the float32 weight and accumulates in float32
    itself (2x faster than upcasting a copy, forward + backward, CIFAR-10 shapes; outputs
    within one bf16 rounding of the upcast path). Elsewhere (fp16, CUDA, where autocast
    runs group_norm in float32 anyway) the input is upcast explicitly.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and x.device.type == "cpu"):
            if w is not None and w.dtype != torch.float32:
                w, b = w.float(), b.float()
            return F.group_norm(x, self.num_groups, w, b, self.eps)
        w = None if w is None else w.float()
        b = None if b is None else b.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


class TimestepEmbedder(nn.Module):
    """t [N] (int or float) -> [N, emb_dim]: sinusoid of width `freq_dim`, then
    Linear -> SiLU -> Linear (emb_dim = 4·model_channels in the paper's UNet)."""

    def __init__(self, freq_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, emb_dim)
        self.fc2 = nn.Linear(emb_dim, emb_dim)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(timestep_embedding(timesteps, self.freq_dim))))


class Dropout(nn.Dropout):
    """nn.Dropout with a faster mask on a CPU: the mask is `rand >= p` from the global
    generator instead of `bernoulli_`, which took 10 % of a CIFAR-10 bf16 training step
    there (dropout forward + backward 1.5-1.6x faster alone; benchmarks/bench_train_step.py
    for the whole step). Same distribution (keep with probability 1 − p, kept values
    scaled by 1/(1 − p) in a separate scalar multiply, so the scale is not rounded to a
    low-precision dtype); other devices use F.dropout (fused on CUDA)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        if self.p == 1.0:
            return x * 0.0
        keep = torch.rand(x.shape, dtype=torch.float32, device=x.device) >= self.p
        return (x * keep.to(x.dtype)) * (1.0 / (1.0 - self.p))


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding.

    x: [N, in_ch, H, W]; emb_act: [N, emb_dim], the embedding *after* its SiLU (the UNet
    applies that SiLU once for all blocks). Returns [N, out_ch, H, W]:
        h = conv1(SiLU(norm1(x)))
        scale-shift:  h = norm2(h)·(1 + scale) + shift,  (scale, shift) = emb_proj(emb_act)
        additive:     h = norm2(h + emb_proj(emb_act))
        out = skip(x) + conv2(dropout(SiLU(h)))
    `skip` is the identity when in_ch == out_ch and a 1×1 conv otherwise; conv2 starts at 0.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = True,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.norm1 = GroupNorm32(num_groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch if use_scale_shift_norm else out_ch)
        self.norm2 = GroupNorm32(num_groups, out_ch)
        self.dropout = Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb_act: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(emb_act).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


def attention_kernel(device_type: str, dtype: torch.dtype, needs_grad: bool) -> str:
    """The faster of two exact attention kernels for a device, dtype and pass: "einsum"
    (two batched matmuls around a float32 softmax, as in the authors' QKVAttention) for
    bf16/fp16 training on a CPU, where it beat scaled_dot_product_attention 1.3-2.3x
    (attention alone, forward + backward, CIFAR-10 and digits shapes, Sapphire Rapids);
    "sdpa" everywhere else: fp32 on a CPU (SDPA 1.15-1.2x faster), every forward-only
    pass (sampling, bits/dim: SDPA 1.2-3x faster) and CUDA (fused flash kernels). The
    whole-step effect: benchmarks/bench_train_step.py, `default` vs `bf16_sdpa`."""
    if device_type == "cpu" and dtype in (torch.bfloat16, torch.float16) and needs_grad:
        return "einsum"
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel: str) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(ch)) v for q, k, v [N, heads, L, ch] -> [N, heads, L, ch].

    kernel: "sdpa", "einsum" or "auto" (`attention_kernel`'s choice). The einsum kernel
    scales q and k by ch^(-1/4) each (no fp16 overflow in the logits) and takes the
    softmax in float32; both agree to float32 rounding.
    """
    if kernel == "auto":
        kernel = attention_kernel(q.device.type, q.dtype, torch.is_grad_enabled())
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    scale = q.shape[-1] ** -0.25
    logits = torch.matmul(q * scale, (k * scale).transpose(-1, -2))  # [N, heads, L, L]
    weights = torch.softmax(logits.float(), dim=-1).to(v.dtype)
    return torch.matmul(weights, v)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the H·W positions, with a residual connection.

    x: [N, C, H, W] -> [N, C, H, W] = x + proj(attention(qkv(norm(x)))). `qkv` is one
    Linear C -> 3C whose output is laid out [q (all heads) | k | v], each head a
    contiguous block of C/num_heads channels. Logits are scaled by 1/sqrt(C/num_heads)
    (F.scaled_dot_product_attention's default); `proj` starts at 0. `kernel` picks the
    attention kernel ("auto": `attention_kernel`'s rule; "sdpa" or "einsum" to force one).
    """

    def __init__(self, channels: int, num_heads: int, num_groups: int = 32) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(
                f"{channels} channels cannot be split into {num_heads} attention heads; "
                "use a num_heads that divides every width"
            )
        self.num_heads = num_heads
        self.kernel = "auto"
        self.norm = GroupNorm32(num_groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_module(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, height, width = x.shape
        # [N, C, H, W] -> [N, L, C]: a free view for channels_last input.
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        qkv = self.qkv(tokens).unflatten(2, (3, self.num_heads, c // self.num_heads))
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, heads, L, ch]
        a = attention(q, k, v, self.kernel)
        out = self.proj(a.transpose(1, 2).flatten(2))  # [N, L, C]
        out = out.transpose(1, 2).unflatten(2, (height, width))  # channels_last strides
        if not x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous()
        return x + out


class Downsample(nn.Module):
    """Halve H and W: a 3×3 stride-2 conv (`use_conv`) or 2×2 average pooling.
    [N, C, H, W] -> [N, C, H/2, W/2]."""

    def __init__(self, channels: int, use_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, then a 3×3 conv if `use_conv`.
    [N, C, H, W] -> [N, C, 2H, 2W]."""

    def __init__(self, channels: int, use_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x
