"""The paper's UNet and its blocks: shapes, zero init, conditioning, formats, errors, the
attention kernels and their rule, float32 GroupNorm statistics, gradient checkpointing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from iddpm.config import UNetConfig
from iddpm.model.layers import (
    GroupNorm32,
    ResBlock,
    SelfAttention2d,
    attention,
    attention_kernel,
    timestep_embedding,
)
from iddpm.model.unet import UNet
from iddpm.presets import get_preset

GRAY8 = UNetConfig(
    image_size=8,
    in_channels=1,
    model_channels=32,
    out_channels=2,
    num_res_blocks=1,
    attention_resolutions=(4,),
    channel_mult=(1, 2),
    num_heads=4,
)
RGB32 = UNetConfig(
    model_channels=32, num_res_blocks=1, channel_mult=(1, 2, 2), attention_resolutions=(16, 8)
)


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (the zero-initialised ones too) small random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.ndim == 1 else 0.0))
    return model


def _inputs(cfg: UNetConfig, n: int = 2, seed: int = 0, size: tuple[int, int] | None = None):
    g = torch.Generator().manual_seed(seed)
    h, w = size or (cfg.image_size, cfg.image_size)
    x = torch.randn(n, cfg.in_channels, h, w, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    return x, t


@pytest.mark.parametrize(
    ("cfg", "size"),
    [(GRAY8, None), (GRAY8.replace(out_channels=1), None), (RGB32, None), (GRAY8, (8, 16))],
    ids=["gray8-learned-sigma", "gray8-fixed-sigma", "rgb32", "gray-8x16"],
)
def test_output_has_input_size_and_out_channels(cfg: UNetConfig, size) -> None:
    x, t = _inputs(cfg, n=3, size=size)
    out = _randomise(UNet(cfg))(x, t)
    assert out.shape == (3, cfg.out_channels or cfg.in_channels, *x.shape[2:])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_learned_variance_doubles_the_output_channels() -> None:
    x, t = _inputs(RGB32)
    for out_channels in (3, 6):
        assert UNet(RGB32.replace(out_channels=out_channels))(x, t).shape[1] == out_channels
    assert UNet(RGB32)(x, t).shape[1] == 3  # not set: one ε channel per image channel


@pytest.mark.parametrize("cfg", [GRAY8, RGB32.replace(num_classes=10)])
def test_fresh_unet_outputs_exactly_zero_but_head_gets_gradient(cfg: UNetConfig) -> None:
    model = UNet(cfg)
    x, t = _inputs(cfg)
    y = torch.tensor([1, 7]) if cfg.num_classes else None
    out = model(x, t, y)
    assert torch.equal(out, torch.zeros_like(out))
    out.square().add(out).sum().backward()
    assert model.head_conv.weight.grad.abs().sum() > 0


def test_zero_initialised_blocks_start_as_the_identity() -> None:
    x = torch.randn(2, 64, 4, 4, generator=torch.Generator().manual_seed(1))
    emb = torch.randn(2, 128)
    assert torch.equal(ResBlock(64, 64, 128)(x, emb), x)
    assert torch.equal(SelfAttention2d(64, 4)(x), x)


def test_timestep_embedding_is_cosine_then_sine() -> None:
    t = torch.tensor([0, 3, 250, 999])
    dim = 10
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim) and emb.dtype == torch.float32
    for i in range(dim // 2):
        phase = t.double() * math.exp(-math.log(10000.0) * i / (dim // 2))
        torch.testing.assert_close(emb[:, i].double(), torch.cos(phase), atol=2e-4, rtol=0)
        torch.testing.assert_close(emb[:, 5 + i].double(), torch.sin(phase), atol=2e-4, rtol=0)
    odd = timestep_embedding(t, 11)
    assert torch.equal(odd[:, :10], emb) and torch.equal(odd[:, 10], torch.zeros(4))


def test_integer_and_float_timesteps_give_the_same_output() -> None:
    model = _randomise(UNet(GRAY8))
    x, t = _inputs(GRAY8)
    assert torch.equal(model(x, t), model(x, t.float()))
    assert not torch.allclose(model(x, t), model(x, t.float() + 0.5))


def test_class_conditioning_changes_the_output() -> None:
    cfg = GRAY8.replace(num_classes=3)
    model = _randomise(UNet(cfg))
    x, t = _inputs(cfg)
    a = model(x, t, torch.tensor([0, 0]))
    b = model(x, t, torch.tensor([1, 2]))
    assert not torch.allclose(a, b)
    # The label enters only through its embedding row: equal rows, equal outputs.
    with torch.no_grad():
        model.class_embed.weight[2] = model.class_embed.weight[0]
    torch.testing.assert_close(model(x, t, torch.tensor([2, 2])), a, rtol=0, atol=0)


def test_scale_shift_and_additive_embedding_sizes() -> None:
    assert ResBlock(32, 64, 128, use_scale_shift_norm=True).emb_proj.out_features == 128
    assert ResBlock(32, 64, 128, use_scale_shift_norm=False).emb_proj.out_features == 64
    model = _randomise(UNet(GRAY8.replace(use_scale_shift_norm=False)))
    assert model(*_inputs(GRAY8)).shape == (2, 2, 8, 8)


def test_attention_matches_explicit_multi_head_softmax() -> None:
    heads, c = 4, 32
    attn = _randomise(SelfAttention2d(c, heads))
    x = torch.randn(2, c, 3, 5, generator=torch.Generator().manual_seed(2))
    tokens = attn.norm(x).flatten(2).transpose(1, 2).double()  # [N, L, C]
    q, k, v = (tokens @ attn.qkv.weight.double().T + attn.qkv.bias.double()).chunk(3, dim=2)
    split = lambda z: z.unflatten(2, (heads, c // heads)).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(2, 3) / math.sqrt(c // heads), dim=-1)
    a = (w @ split(v)).transpose(1, 2).flatten(2)
    ref = x.double() + (a @ attn.proj.weight.double().T + attn.proj.bias.double()).transpose(
        1, 2
    ).reshape(x.shape)
    torch.testing.assert_close(attn(x).double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 32, 4, 4), (8, 128, 32, 32)])
def test_groupnorm_runs_in_float32_for_bf16_input(shape) -> None:
    # Statistics over up to 131072 values with a large mean: accumulated in bf16 they
    # would be off by far more than the one bf16 rounding (2^-9 relative) of the output.
    norm = _randomise(GroupNorm32(8, shape[1]))
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3 + 5).bfloat16()
    exact = F.group_norm(x.double(), 8, norm.weight.double(), norm.bias.double(), norm.eps)
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = norm(x)
        assert out.dtype == torch.bfloat16
        err = (out.double() - exact).abs()
        assert bool((err <= 2**-8 * exact.abs() + 1e-3).all()), err.max()


def test_groupnorm_in_float32_is_plain_groupnorm() -> None:
    norm = _randomise(GroupNorm32(8, 32))
    x = torch.randn(2, 32, 4, 4)
    assert torch.equal(norm(x), F.group_norm(x, 8, norm.weight, norm.bias, norm.eps))


@pytest.mark.parametrize(
    ("device", "dtype", "grad", "kernel"),
    [
        ("cpu", torch.bfloat16, True, "einsum"),
        ("cpu", torch.float16, True, "einsum"),
        ("cpu", torch.bfloat16, False, "sdpa"),
        ("cpu", torch.float32, True, "sdpa"),
        ("cuda", torch.bfloat16, True, "sdpa"),
    ],
)
def test_attention_kernel_rule(device, dtype, grad, kernel) -> None:
    assert attention_kernel(device, dtype, grad) == kernel


# Logits of 16-term dot products of N(0, 1) values (|logit| ≲ 20 before the 1/4 scale):
# float32 rounding (~1e-7 relative) leaves ~1e-5 in the output, bf16 (2^-8) ~5e-2.
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_attention_kernels_agree(dtype, tol) -> None:
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 64, 16, generator=g) for _ in range(3))
    exact = attention(q.double(), k.double(), v.double(), "sdpa")
    for kernel in ("sdpa", "einsum"):
        out = attention(q.to(dtype), k.to(dtype), v.to(dtype), kernel)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), exact, rtol=tol, atol=tol)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_grad_checkpoint_gives_bitwise_equal_gradients(dropout: float) -> None:
    cfg = RGB32.replace(dropout=dropout)
    grads, calls = [], []
    for checkpointing in (False, True):
        model = _randomise(UNet(cfg)).train()
        model.grad_checkpoint = checkpointing
        seen: list[int] = []
        model.mid_res1.register_forward_pre_hook(lambda m, i, seen=seen: seen.append(1))
        x, t = _inputs(cfg)
        torch.manual_seed(5)  # the dropout masks
        model(x, t).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        calls.append(len(seen))
    assert calls == [1, 2]  # checkpointed: the block ran again in the backward pass
    for name, g in grads[0].items():
        assert torch.equal(grads[1][name], g), name


def test_grad_checkpoint_is_inactive_without_gradients() -> None:
    model = _randomise(UNet(GRAY8))
    model.grad_checkpoint = True
    x, t = _inputs(GRAY8)
    ref = model.eval()(x, t)
    with torch.no_grad():
        assert torch.equal(model(x, t), ref)


def test_channels_last_matches_and_stays_channels_last() -> None:
    model = _randomise(UNet(RGB32))
    x, t = _inputs(RGB32)
    ref = model(x, t)
    model = model.to(memory_format=torch.channels_last)
    formats: list[bool] = []
    for module in model.modules():
        if isinstance(module, (ResBlock, SelfAttention2d)):
            module.register_forward_hook(
                lambda m, i, o: formats.append(o.is_contiguous(memory_format=torch.channels_last))
            )
    out = model(x.contiguous(memory_format=torch.channels_last), t)
    # Different kernels, different float32 summation order: compare relative to the scale.
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert formats and all(formats)


def test_contiguous_model_keeps_contiguous_activations() -> None:
    model = _randomise(UNet(RGB32))
    formats: list[bool] = []
    for module in model.modules():
        if isinstance(module, (ResBlock, SelfAttention2d)):
            module.register_forward_hook(lambda m, i, o: formats.append(o.is_contiguous()))
    assert model(*_inputs(RGB32)).is_contiguous()
    assert formats and all(formats)


def test_bf16_autocast_runs_and_stays_close_to_fp32() -> None:
    model = _randomise(UNet(GRAY8))
    x, t = _inputs(GRAY8)
    ref = model(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t)
    assert out.dtype == torch.bfloat16
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel  # bf16 keeps 8 mantissa bits: ~0.4% per op, a few % end to end


def test_dropout_is_active_only_in_training() -> None:
    model = _randomise(UNet(GRAY8.replace(dropout=0.3)))
    x, t = _inputs(GRAY8)
    torch.manual_seed(0)
    assert not torch.equal(model.train()(x, t), model(x, t))
    model.eval()
    assert torch.equal(model(x, t), model(x, t))


def test_average_pool_resampling_has_no_parameters() -> None:
    model = UNet(GRAY8.replace(conv_resample=False))
    assert not any("resample" in name for name, _ in model.named_parameters())
    assert model(*_inputs(GRAY8)).shape == (2, 2, 8, 8)


def test_paper_cifar10_model_has_52_5m_parameters() -> None:
    # 128 channels, mult (1, 2, 2, 2), 3 res blocks, attention at 16 and 8, 4 heads, 6 outputs.
    with torch.device("meta"):
        model = UNet(get_preset("cifar10").model)
    assert sum(p.numel() for p in model.parameters()) == 52_546_438


@pytest.mark.parametrize(
    ("x_shape", "t_shape", "y", "match"),
    [
        ((2, 3, 8, 8), (2,), None, r"x of shape \[N, 1, H, W\]"),
        ((2, 8, 8), (2,), None, r"x of shape \[N, 1, H, W\]"),
        ((2, 1, 7, 8), (2,), None, "not divisible by 2"),
        ((2, 1, 8, 8), (3,), None, r"timesteps must have shape \[2\]"),
        ((2, 1, 8, 8), (2,), torch.tensor([0, 1]), "unconditional but y was given"),
    ],
)
def test_bad_inputs_raise_one_line_errors(x_shape, t_shape, y, match) -> None:
    model = UNet(GRAY8)
    with pytest.raises(ValueError, match=match):
        model(torch.zeros(x_shape), torch.zeros(t_shape), y)


def test_conditional_model_needs_well_shaped_labels() -> None:
    model = UNet(GRAY8.replace(num_classes=10))
    x, t = _inputs(GRAY8)
    with pytest.raises(ValueError, match=r"class-conditional \(10 classes\); pass y"):
        model(x, t)
    with pytest.raises(ValueError, match=r"y must have shape \[2\]"):
        model(x, t, torch.zeros(2, 1, dtype=torch.long))


def test_bad_architecture_raises_at_construction() -> None:
    with pytest.raises(ValueError, match=r"attention_resolutions \[2\] match no feature-map size"):
        UNet(GRAY8.replace(attention_resolutions=(2,)))
    with pytest.raises(ValueError, match="cannot be split into 3 attention heads"):
        UNet(GRAY8.replace(num_heads=3))
