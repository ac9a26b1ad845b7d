"""Load checkpoints of the authors' implementation (openai/improved-diffusion, `UNetModel`).

Their state dict carries no configuration, so the hyperparameters come from the caller
(`reference_config`, from the reference constructor's keyword arguments) or are read
from tensor shapes (`infer_reference_config`; only the head count and dropout cannot be
inferred). `convert_reference_state_dict` renames every tensor to our module layout and
reorders the fused attention projection: theirs groups the 3C output channels per head
as [q, k, v of head 0 | q, k, v of head 1 | ...] in a 1-d conv, ours is a Linear laid
out [q of all heads | k | v]. Converted models reproduce the reference outputs to float32
rounding (their q·k scaling by ch^(-1/4) on each side equals SDPA's 1/sqrt(ch)).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from iddpm._io import load_tensors
from iddpm.config import UNetConfig
from iddpm.model.unet import UNet

_REFERENCE_FIX = "pass a model.pt or ema_*.pt of openai/improved-diffusion"
# Reference keyword-argument defaults of UNetModel (those that may be omitted).
_REF_DEFAULTS: dict[str, Any] = {
    "dropout": 0.0,
    "channel_mult": (1, 2, 4, 8),
    "conv_resample": True,
    "dims": 2,
    "num_classes": None,
    "use_checkpoint": False,
    "num_heads": 1,
    "num_heads_upsample": -1,
    "use_scale_shift_norm": False,
}
_REF_REQUIRED = (
    "in_channels",
    "model_channels",
    "out_channels",
    "num_res_blocks",
    "attention_resolutions",
)
# Sub-module names inside one reference block -> (our sub-module, our name inside it).
_INNER_NAMES = {
    "in_layers.0": ("res", "norm1"),
    "in_layers.2": ("res", "conv1"),
    "emb_layers.1": ("res", "emb_proj"),
    "out_layers.0": ("res", "norm2"),
    "out_layers.3": ("res", "conv2"),
    "skip_connection": ("res", "skip"),
    "norm": ("attn", "norm"),
    "qkv": ("attn", "qkv"),
    "proj_out": ("attn", "proj"),
    "op": ("resample", "conv"),
    "conv": ("resample", "conv"),
}
_TOP_NAMES = {
    "time_embed.0": "time_embed.fc1",
    "time_embed.2": "time_embed.fc2",
    "label_emb": "class_embed",
    "input_blocks.0.0": "stem",
    "out.0": "head_norm",
    "out.2": "head_conv",
}
_MIDDLE = ("mid_res1", "mid_attn", "mid_res2")
_BLOCK_KEY = re.compile(r"(input_blocks|output_blocks)\.(\d+)\.\d+\.(.+)\.(weight|bias)$")
_MIDDLE_KEY = re.compile(r"middle_block\.([012])\.(.+)\.(weight|bias)$")
_REVERSE_INNER = {v: k for k, v in _INNER_NAMES.items() if k != "op"}
_REVERSE_TOP = {v: k for k, v in _TOP_NAMES.items()}


def reference_config(*, image_size: int, **ref_kwargs: Any) -> UNetConfig:
    """Our `UNetConfig` for a reference `UNetModel(**ref_kwargs)` run on image_size².

    The reference gives `attention_resolutions` as downsampling rates (2 and 4 at 32×32);
    ours are feature-map sizes in pixels (16 and 8), so rate r becomes image_size // r.
    Rates the network never reaches are dropped (the reference ignores them too).
    `use_checkpoint` (gradient checkpointing) does not change outputs and is ignored.
    """
    unknown = sorted(set(ref_kwargs) - set(_REF_DEFAULTS) - set(_REF_REQUIRED))
    if unknown:
        raise ValueError(f"unknown reference UNetModel argument(s) {unknown}; remove them")
    missing = [k for k in _REF_REQUIRED if k not in ref_kwargs]
    if missing:
        raise ValueError(f"reference config is missing {missing}; pass every required argument")
    kw = {**_REF_DEFAULTS, **ref_kwargs}
    if kw["dims"] != 2:
        raise ValueError(
            f"only 2-d reference models are supported, got dims={kw['dims']}; convert a 2-d one"
        )
    if kw["num_heads_upsample"] not in (-1, kw["num_heads"]):
        raise ValueError(
            f"num_heads_upsample={kw['num_heads_upsample']} differs from num_heads="
            f"{kw['num_heads']}; our UNet uses one head count throughout: set them equal"
        )
    mult = tuple(int(m) for m in kw["channel_mult"])
    rates = {2**level for level in range(len(mult))}
    # Largest feature map first, as infer_reference_config returns them.
    sizes = tuple(
        sorted({image_size // int(r) for r in kw["attention_resolutions"] if int(r) in rates})[::-1]
    )
    return UNetConfig(
        image_size=image_size,
        in_channels=int(kw["in_channels"]),
        model_channels=int(kw["model_channels"]),
        out_channels=int(kw["out_channels"]),
        num_res_blocks=int(kw["num_res_blocks"]),
        attention_resolutions=sizes,
        channel_mult=mult,
        num_heads=int(kw["num_heads"]),
        dropout=float(kw["dropout"]),
        use_scale_shift_norm=bool(kw["use_scale_shift_norm"]),
        num_classes=None if kw["num_classes"] is None else int(kw["num_classes"]),
        conv_resample=bool(kw["conv_resample"]),
    )


def infer_reference_config(
    state_dict: Mapping[str, Any], image_size: int, num_heads: int = 4, dropout: float = 0.0
) -> UNetConfig:
    """Read a reference UNet's hyperparameters from its tensor shapes.

    Recovers in/out/model channels, channel_mult, num_res_blocks, attention placement
    (as pixel sizes at `image_size`), num_classes, scale-shift norm and conv resampling.
    `num_heads` cannot be read from shapes: it defaults to 4, the authors' script default
    used by their released checkpoints; `dropout` only matters for training.
    """
    shape = {k: tuple(v.shape) for k, v in state_dict.items()}
    if "input_blocks.0.0.weight" not in shape or "out.2.weight" not in shape:
        raise ValueError(
            "state dict lacks input_blocks.0.0.weight / out.2.weight, so it is not an "
            f"improved-diffusion UNetModel state dict; {_REFERENCE_FIX}"
        )
    mc, in_ch = shape["input_blocks.0.0.weight"][:2]
    enc_res = _indices(shape, "input_blocks", "in_layers.0.weight")
    dec_res = _indices(shape, "output_blocks", "in_layers.0.weight")
    levels = len(dec_res) - len(enc_res)
    if levels < 1 or len(enc_res) % levels or dec_res != list(range(len(dec_res))):
        raise ValueError(
            f"cannot infer levels from {len(enc_res)} encoder and {len(dec_res)} decoder "
            f"residual blocks; the state dict is incomplete: {_REFERENCE_FIX}"
        )
    nrb = len(enc_res) // levels
    first = [1 + level * (nrb + 1) for level in range(levels)]
    mult = tuple(shape[f"input_blocks.{i}.0.in_layers.2.weight"][0] // mc for i in first)
    enc_attn = {
        (i - 1) // (nrb + 1) for i in _indices(shape, "input_blocks", "qkv.weight", block_pos=1)
    }
    dec_attn = {
        levels - 1 - i // (nrb + 1)
        for i in _indices(shape, "output_blocks", "qkv.weight", block_pos=1)
    }
    if enc_attn != dec_attn:
        raise ValueError(
            f"attention at encoder levels {sorted(enc_attn)} but decoder levels "
            f"{sorted(dec_attn)}; our UNet places attention symmetrically, so convert only "
            "models with the same attention resolutions in both halves"
        )
    emb_out = shape["input_blocks.1.0.emb_layers.1.weight"][0]
    return UNetConfig(
        image_size=image_size,
        in_channels=in_ch,
        model_channels=mc,
        out_channels=shape["out.2.weight"][0],
        num_res_blocks=nrb,
        attention_resolutions=tuple(image_size // 2**lv for lv in sorted(enc_attn)),
        channel_mult=mult,
        num_heads=num_heads,
        dropout=dropout,
        use_scale_shift_norm=emb_out == 2 * mult[0] * mc,
        num_classes=shape["label_emb.weight"][0] if "label_emb.weight" in shape else None,
        conv_resample=levels == 1 or any(k.endswith(".op.weight") for k in shape),
    )


def _indices(shape: Mapping[str, tuple], group: str, leaf: str, block_pos: int = 0) -> list[int]:
    """Sorted block indices i with a key `{group}.{i}.{block_pos}.{leaf}` (i >= 1 for input)."""
    pat = re.compile(rf"{group}\.(\d+)\.{block_pos}\.{re.escape(leaf)}$")
    found = {int(m.group(1)) for k in shape if (m := pat.match(k))}
    return sorted(i for i in found if group == "output_blocks" or i >= 1)


def convert_reference_state_dict(
    state_dict: Mapping[str, Any], cfg: UNetConfig
) -> dict[str, torch.Tensor]:
    """Rename and reshape a reference state dict into one `UNet(cfg).load_state_dict` takes.

    Values may be tensors or numpy arrays; they are returned as float tensors (copies).
    Raises ValueError naming the keys that do not fit `cfg` (wrong config or not a
    reference checkpoint).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        ours = _our_key(key)
        t = torch.as_tensor(value).detach().clone()
        if ours.endswith(("attn.qkv.weight", "attn.proj.weight")):
            t = t.squeeze(-1)  # 1-d conv [out, in, 1] -> Linear [out, in]
        if ours.endswith(("attn.qkv.weight", "attn.qkv.bias")):
            t = _qkv_per_head_to_grouped(t, cfg.num_heads)
        out[ours] = t
    _check_fits(out, cfg)
    return out


def _our_key(key: str) -> str:
    module, _, leaf = key.rpartition(".")
    if module in _TOP_NAMES:
        return f"{_TOP_NAMES[module]}.{leaf}"
    m = _BLOCK_KEY.match(key)
    if m and m.group(3) in _INNER_NAMES:
        group, index, name, leaf = m.groups()
        sub, inner = _INNER_NAMES[name]
        if group == "input_blocks":
            return f"encoder.{int(index) - 1}.{sub}.{inner}.{leaf}"
        return f"decoder.{index}.{sub}.{inner}.{leaf}"
    m = _MIDDLE_KEY.match(key)
    if m and m.group(2) in _INNER_NAMES:
        return f"{_MIDDLE[int(m.group(1))]}.{_INNER_NAMES[m.group(2)][1]}.{m.group(3)}"
    raise ValueError(
        f"unexpected key {key!r}; not an improved-diffusion UNetModel state dict: {_REFERENCE_FIX}"
    )


def _qkv_per_head_to_grouped(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[3C, ...] per-head [q_h, k_h, v_h] blocks -> [3C, ...] as [q (all heads) | k | v]."""
    three_c = t.shape[0]
    if three_c % (3 * num_heads):
        raise ValueError(
            f"qkv has {three_c} output channels, not divisible by 3·num_heads={3 * num_heads}; "
            "pass the num_heads the checkpoint was trained with"
        )
    ch = three_c // (3 * num_heads)
    rest = t.shape[1:]
    return t.reshape(num_heads, 3, ch, *rest).transpose(0, 1).reshape(three_c, *rest)


def to_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor], num_heads: int
) -> dict[str, torch.Tensor]:
    """The inverse of `convert_reference_state_dict`: our UNet's tensors under the
    reference `UNetModel`'s keys, shapes and per-head qkv layout (for exporting a model
    to the authors' code). `num_heads` is the config's head count."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        ref = _reference_module(module, state_dict)
        t = value.detach().clone()
        if ref.endswith("qkv"):
            t = _grouped_to_qkv_per_head(t, num_heads)
        if leaf == "weight" and ref.endswith(("qkv", "proj_out")):
            t = t.unsqueeze(-1)  # Linear [out, in] -> 1-d conv [out, in, 1]
        out[f"{ref}.{leaf}"] = t
    return out


def _reference_module(module: str, state_dict: Mapping[str, Any]) -> str:
    """Our module path (e.g. "decoder.5.resample.conv") -> the reference's."""
    if module in _REVERSE_TOP:
        return _REVERSE_TOP[module]
    parts = module.split(".")
    if parts[0] in _MIDDLE:
        sub = "attn" if parts[0] == "mid_attn" else "res"
        return f"middle_block.{_MIDDLE.index(parts[0])}.{_REVERSE_INNER[(sub, parts[1])]}"
    group, index, sub, inner = parts
    if group == "encoder":
        name = "op" if sub == "resample" else _REVERSE_INNER[(sub, inner)]
        return f"input_blocks.{int(index) + 1}.{int(sub == 'attn')}.{name}"
    pos = {"res": 0, "attn": 1, "resample": 1}[sub]
    if sub == "resample" and f"decoder.{index}.attn.qkv.weight" in state_dict:
        pos = 2  # after the ResBlock and the attention
    return f"output_blocks.{index}.{pos}.{_REVERSE_INNER[(sub, inner)]}"


def _grouped_to_qkv_per_head(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of `_qkv_per_head_to_grouped`."""
    three_c, rest = t.shape[0], t.shape[1:]
    ch = three_c // (3 * num_heads)
    return t.reshape(3, num_heads, ch, *rest).transpose(0, 1).reshape(three_c, *rest)


def _check_fits(converted: Mapping[str, torch.Tensor], cfg: UNetConfig) -> None:
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in UNet(cfg).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in converted.items()}
    problems = sorted(set(want) ^ set(got)) + sorted(
        k for k in set(want) & set(got) if want[k] != got[k]
    )
    if problems:
        shown = ", ".join(problems[:4]) + (", ..." if len(problems) > 4 else "")
        raise ValueError(
            f"reference state dict does not fit {cfg}: {len(problems)} missing, extra or "
            f"mis-shaped tensors ({shown}); check the config or use infer_reference_config"
        )


def load_reference_checkpoint(
    path_or_state_dict: str | os.PathLike[str] | Mapping[str, Any],
    image_size: int,
    num_heads: int = 4,
    dropout: float = 0.0,
    cfg: UNetConfig | None = None,
) -> tuple[UNetConfig, UNet]:
    """Build our UNet from a reference checkpoint (a `.pt` state dict or the dict itself).

    The config is `cfg` when given, else inferred from shapes (see
    `infer_reference_config`). Files are read with `torch.load(weights_only=True)` onto
    the CPU, so loading never runs pickled code; a file that is not a reference state dict
    (damaged, foreign, an iddpm checkpoint, a folder) is a one-line error saying what to
    pass. Returns (config, model in eval mode).
    """
    sd = path_or_state_dict
    if isinstance(sd, Mapping):
        _check_state_dict(sd, "the given state dict")
    else:
        sd = _read_reference_file(sd)
    cfg = cfg or infer_reference_config(sd, image_size, num_heads=num_heads, dropout=dropout)
    model = UNet(cfg)
    model.load_state_dict(convert_reference_state_dict(sd, cfg))
    return cfg, model.eval()


def _read_reference_file(path: str | os.PathLike[str]) -> Mapping[str, Any]:
    """The state dict in a reference .pt file, read safely (see `load_tensors`)."""
    sd = load_tensors(path, "reference checkpoint", _REFERENCE_FIX)
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) for k in sd):
        raise ValueError(
            f"reference checkpoint {os.fspath(path)} does not hold a state dict "
            f"(it holds a {type(sd).__name__}); {_REFERENCE_FIX}"
        )
    _check_state_dict(sd, os.fspath(path))
    return sd


# The entries of an iddpm checkpoint besides its weights (checkpoint.py's layout).
_IDDPM_ENTRIES = ("format_version", "config", "ema", "optimizer", "step")


def _check_state_dict(sd: Mapping[str, Any], where: str) -> None:
    """A reference state dict maps parameter names to tensors; an iddpm checkpoint (weights
    under "model" beside its config, EMA, ...) needs no conversion, and anything else with
    non-tensor entries is not a model: one line each, instead of an error on `.shape`."""
    others = [k for k, v in sd.items() if not hasattr(v, "shape")]  # tensors or arrays
    if not others:
        return
    if isinstance(sd.get("model"), Mapping) and any(k in sd for k in _IDDPM_ENTRIES):
        found = ", ".join(k for k in _IDDPM_ENTRIES if k in sd)
        use = (
            "use it directly (iddpm sample / iddpm nll / iddpm train --resume or --init-from)"
            if "format_version" in sd
            else "but without its format_version it is damaged: use a checkpoint that "
            "iddpm train or iddpm convert wrote"
        )
        raise ValueError(
            f"{where} is an iddpm checkpoint (model weights with {found}), not a reference "
            f"state dict: it needs no conversion; {use}"
        )
    shown = ", ".join(repr(k) for k in others[:3]) + (", ..." if len(others) > 3 else "")
    raise ValueError(
        f"{where} is not a reference state dict: {shown} "
        f"hold{'s' if len(others) == 1 else ''} no tensor; {_REFERENCE_FIX}"
    )
