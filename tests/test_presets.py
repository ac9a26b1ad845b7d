"""Presets: the paper's recipes (docs/paper.md, "The network") and the CPU-sized digits run."""

from __future__ import annotations

import pytest

from iddpm.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", ["cifar10", "imagenet64"])
def test_paper_recipes(name: str) -> None:
    cfg = get_preset(name)
    d, m, t = cfg.diffusion, cfg.model, cfg.train
    assert (d.num_timesteps, d.schedule, d.var_type, d.loss) == (
        4000,
        "cosine",
        "learned-range",
        "hybrid",
    )
    assert (t.lr, t.batch_size, t.ema_rates) == (1e-4, 128, (0.9999,))
    assert (m.model_channels, m.num_res_blocks, m.attention_resolutions, m.num_heads) == (
        128,
        3,
        (16, 8),
        4,
    )
    if name == "cifar10":
        assert (m.image_size, m.channel_mult, m.dropout, t.steps) == (
            32,
            (1, 2, 2, 2),
            0.3,
            500_000,
        )
    else:
        assert (m.image_size, m.channel_mult, m.dropout, t.steps) == (
            64,
            (1, 2, 3, 4),
            0.0,
            1_500_000,
        )


@pytest.mark.parametrize("name", [p for p in PRESETS if p.endswith("-vlb")])
def test_vlb_variants_use_importance_sampling(name: str) -> None:
    cfg = get_preset(name)
    assert (cfg.diffusion.loss, cfg.diffusion.timestep_sampler) == ("vlb", "importance")
    base = get_preset(name.removesuffix("-vlb"))
    assert cfg.model == base.model and cfg.train == base.train


def test_digits_preset_fits_the_bundled_data() -> None:
    cfg = get_preset("digits")
    assert (cfg.model.image_size, cfg.model.in_channels, cfg.train.data) == (8, 1, "digits")
    assert not cfg.train.random_flip


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown preset 'cifar'; choose one of: digits"):
        get_preset("cifar")
