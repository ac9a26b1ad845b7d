"""Loading openai/improved-diffusion checkpoints reproduces that implementation's outputs.

The fixture (tests/fixtures/improved_diffusion_unet.npz, see its README) holds two small
reference UNets with random weights (zero-initialised layers randomised too) and their
outputs on fixed inputs, computed by the reference code itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from iddpm.config import UNetConfig
from iddpm.model.convert import (
    _qkv_per_head_to_grouped,
    convert_reference_state_dict,
    infer_reference_config,
    load_reference_checkpoint,
    reference_config,
    to_reference_state_dict,
)
from iddpm.model.unet import UNet

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "improved_diffusion_unet.npz"
TOL = {"rtol": 1e-4, "atol": 1e-5}  # the fixture README's suggestion


@pytest.fixture(scope="module")
def fixture() -> dict[str, np.ndarray]:
    with np.load(FIXTURE) as z:
        return {k: z[k] for k in z.files}


def _reference(fx: dict[str, np.ndarray], name: str) -> tuple[dict, dict[str, np.ndarray]]:
    kwargs = json.loads(str(fx[f"{name}.config_json"]))
    keys = json.loads(str(fx[f"{name}.state_dict_keys"]))
    return kwargs, {k: fx[f"{name}.sd.{k}"] for k in keys}


def _run(model: UNet, fx, timesteps=None, cond: bool = False) -> torch.Tensor:
    x = torch.from_numpy(fx["unet.x"])
    t = torch.from_numpy(fx["unet.timesteps"]) if timesteps is None else timesteps
    y = torch.from_numpy(fx["unet.y"]) if cond else None
    with torch.no_grad():
        return model(x, t, y)


def test_tiny_reproduces_reference_outputs_for_float_and_int_timesteps(fixture) -> None:
    kwargs, sd = _reference(fixture, "tiny")
    _, model = load_reference_checkpoint(sd, image_size=8, num_heads=kwargs["num_heads"])
    torch.testing.assert_close(
        _run(model, fixture), torch.from_numpy(fixture["unet.tiny.out"]), **TOL
    )
    t_int = torch.tensor([0, 1, 50, 99], dtype=torch.int64)
    want = torch.from_numpy(fixture["unet.tiny.out_int_timesteps"])
    torch.testing.assert_close(_run(model, fixture, t_int), want, **TOL)


def test_tinycond_reproduces_reference_outputs(fixture) -> None:
    kwargs, sd = _reference(fixture, "tinycond")
    cfg = reference_config(image_size=8, **kwargs)
    model = UNet(cfg).eval()
    model.load_state_dict(convert_reference_state_dict(sd, cfg))
    want = torch.from_numpy(fixture["unet.tinycond.out"])
    torch.testing.assert_close(_run(model, fixture, cond=True), want, **TOL)


def test_converted_model_reproduces_outputs_in_channels_last(fixture) -> None:
    kwargs, sd = _reference(fixture, "tiny")
    _, model = load_reference_checkpoint(sd, image_size=8, num_heads=kwargs["num_heads"])
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(
        _run(model, fixture), torch.from_numpy(fixture["unet.tiny.out"]), **TOL
    )


@pytest.mark.parametrize("name", ["tiny", "tinycond"])
def test_inferred_config_equals_the_constructor_config(fixture, name: str) -> None:
    kwargs, sd = _reference(fixture, name)
    from_kwargs = reference_config(image_size=8, **kwargs)
    assert infer_reference_config(sd, 8, num_heads=kwargs["num_heads"]) == from_kwargs
    # rates 2 (tiny) and 1, 2 (tinycond) at 8x8 are feature maps of 4 and 8, 4 pixels
    assert from_kwargs.attention_resolutions == {"tiny": (4,), "tinycond": (8, 4)}[name]
    model = UNet(from_kwargs)
    assert sum(p.numel() for p in model.parameters()) == int(fixture[f"{name}.num_params"])


@pytest.mark.parametrize("name", ["tiny", "tinycond"])
def test_export_inverts_the_conversion_exactly(fixture, name: str) -> None:
    kwargs, sd = _reference(fixture, name)
    cfg = reference_config(image_size=8, **kwargs)
    back = to_reference_state_dict(convert_reference_state_dict(sd, cfg), cfg.num_heads)
    assert list(back) == list(sd)  # same keys, in the reference's own order
    for key, value in sd.items():
        assert torch.equal(back[key], torch.from_numpy(value)), key


@pytest.mark.parametrize(
    "cfg",
    [
        UNetConfig(out_channels=6),  # the paper's CIFAR-10 model (learned Σ)
        UNetConfig(image_size=64, channel_mult=(1, 2, 3, 4), out_channels=6),  # ImageNet 64
        UNetConfig(
            image_size=8,
            in_channels=1,
            out_channels=2,
            model_channels=64,
            num_res_blocks=2,
            attention_resolutions=(4,),
            channel_mult=(1, 2),
            num_heads=4,
        ),
        UNetConfig(
            image_size=16,
            model_channels=32,
            out_channels=3,
            num_res_blocks=2,
            attention_resolutions=(16,),
            channel_mult=(1, 1, 2),
            num_heads=2,
            use_scale_shift_norm=False,
            num_classes=5,
            conv_resample=False,
        ),
    ],
    ids=["cifar10", "imagenet64", "digits", "cond-additive-avgpool"],
)
def test_config_is_inferred_from_the_exported_shapes(cfg: UNetConfig) -> None:
    with torch.device("meta"):
        exported = to_reference_state_dict(UNet(cfg).state_dict(), cfg.num_heads)
    inferred = infer_reference_config(exported, cfg.image_size, num_heads=cfg.num_heads)
    assert inferred == cfg


def test_wrong_head_count_changes_the_output(fixture) -> None:
    # The per-head qkv layout matters: 1 head instead of the trained 2 loads but differs.
    _, sd = _reference(fixture, "tiny")
    _, model = load_reference_checkpoint(sd, image_size=8, num_heads=1)
    assert not torch.allclose(_run(model, fixture), torch.from_numpy(fixture["unet.tiny.out"]))


def test_qkv_per_head_layout_is_regrouped_by_projection() -> None:
    # Label rows as 100·head + 10·{q=0,k=1,v=2} + channel, 2 heads of 2 channels.
    labels = [100 * h + 10 * j + c for h in range(2) for j in range(3) for c in range(2)]
    out = _qkv_per_head_to_grouped(torch.tensor(labels), num_heads=2).tolist()
    assert out == [100 * h + 10 * j + c for j in range(3) for h in range(2) for c in range(2)]
    # A weight [3C, C_in] moves whole rows the same way.
    weight = torch.tensor(labels)[:, None] * 1000 + torch.arange(3)
    assert torch.equal(
        _qkv_per_head_to_grouped(weight, 2), torch.tensor(out)[:, None] * 1000 + torch.arange(3)
    )


def test_reference_config_maps_rates_and_defaults() -> None:
    cfg = reference_config(
        image_size=32,
        in_channels=3,
        model_channels=128,
        out_channels=6,
        num_res_blocks=3,
        attention_resolutions=(2, 4, 64),  # 64 is never reached and is ignored, as there
        channel_mult=(1, 2, 2, 2),
        num_heads=4,
        use_checkpoint=True,
        use_scale_shift_norm=True,
        dropout=0.3,
    )
    assert cfg.attention_resolutions == (16, 8)
    assert (cfg.num_heads, cfg.dropout, cfg.num_classes, cfg.conv_resample) == (4, 0.3, None, True)
    default = reference_config(
        image_size=64,
        in_channels=3,
        model_channels=32,
        out_channels=3,
        num_res_blocks=1,
        attention_resolutions=(),
    )
    assert default.channel_mult == (1, 2, 4, 8) and default.num_heads == 1
    assert default.use_scale_shift_norm is False


def test_average_pool_model_is_inferred_from_missing_downsample_weights(fixture) -> None:
    _, sd = _reference(fixture, "tiny")
    sd = {k: v for k, v in sd.items() if ".op." not in k and not k.startswith("output_blocks.1.2")}
    cfg = infer_reference_config(sd, 8, num_heads=2)
    assert cfg.conv_resample is False
    _, model = load_reference_checkpoint(sd, 8, num_heads=2)
    assert _run(model, fixture).shape == (4, 6, 8, 8)


def test_loads_a_torch_saved_file_with_weights_only(fixture, tmp_path: Path) -> None:
    _, sd = _reference(fixture, "tiny")
    path = tmp_path / "model.pt"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
    _, model = load_reference_checkpoint(path, image_size=8, num_heads=2)
    assert not model.training
    torch.testing.assert_close(
        _run(model, fixture), torch.from_numpy(fixture["unet.tiny.out"]), **TOL
    )


BASE = {
    "in_channels": 3,
    "model_channels": 32,
    "out_channels": 3,
    "num_res_blocks": 1,
    "attention_resolutions": (),
}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"use_fp16": True}, r"unknown reference UNetModel argument\(s\) \['use_fp16'\]"),
        ({"dims": 3}, "only 2-d reference models"),
        ({"num_heads": 4, "num_heads_upsample": 2}, "our UNet uses one head count"),
    ],
)
def test_reference_config_rejects_what_we_cannot_build(changes, match) -> None:
    with pytest.raises(ValueError, match=match):
        reference_config(image_size=8, **{**BASE, **changes})
    with pytest.raises(ValueError, match=r"missing \['num_res_blocks'\]"):
        reference_config(image_size=8, **{k: v for k, v in BASE.items() if k != "num_res_blocks"})


def test_conversion_errors_name_the_problem(fixture, tmp_path: Path) -> None:
    kwargs, sd = _reference(fixture, "tiny")
    cfg = reference_config(image_size=8, **kwargs)
    with pytest.raises(ValueError, match=r"does not fit .* check the config"):
        convert_reference_state_dict(sd, cfg.replace(num_res_blocks=2))
    with pytest.raises(ValueError, match=r"unexpected key 'model\.extra'"):
        convert_reference_state_dict({**sd, "model.extra": np.zeros(1)}, cfg)
    with pytest.raises(ValueError, match="not divisible by 3·num_heads=9"):
        convert_reference_state_dict(sd, cfg.replace(num_heads=3))
    with pytest.raises(ValueError, match="not an improved-diffusion UNetModel"):
        infer_reference_config({"foo": np.zeros(1)}, 8)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt does not exist; pass a model\.pt"):
        load_reference_checkpoint(tmp_path / "missing.pt", 8)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        load_reference_checkpoint(tmp_path / "list.pt", 8)
