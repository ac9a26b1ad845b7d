"""Config dataclasses: paper defaults, lossless round trips, one-line validation errors."""

from __future__ import annotations

import json

import pytest

from iddpm.config import (
    DiffusionConfig,
    EvalConfig,
    ExperimentConfig,
    SampleConfig,
    TrainConfig,
    UNetConfig,
    differences,
)


def test_defaults_are_the_papers_recipe() -> None:
    d, m, t = DiffusionConfig(), UNetConfig(), TrainConfig()
    assert (d.num_timesteps, d.schedule, d.var_type, d.loss, d.vlb_weight) == (
        4000,
        "cosine",
        "learned-range",
        "hybrid",
        0.001,
    )
    assert (m.model_channels, m.num_res_blocks, m.channel_mult, m.num_heads) == (
        128,
        3,
        (1, 2, 2, 2),
        4,
    )
    assert m.attention_resolutions == (16, 8)
    assert (t.lr, t.batch_size, t.ema_rates) == (1e-4, 128, (0.9999,))


@pytest.mark.parametrize(
    "cls", [DiffusionConfig, UNetConfig, TrainConfig, SampleConfig, EvalConfig]
)
def test_round_trip_through_json(cls) -> None:
    cfg = cls()
    again = cls.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_experiment_round_trip_keeps_tuples() -> None:
    cfg = ExperimentConfig(
        model=UNetConfig(channel_mult=(1, 2), attention_resolutions=(8,), image_size=16),
        train=TrainConfig(ema_rates=(0.999, 0.9999)),
    )
    again = ExperimentConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.model.channel_mult, tuple)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: DiffusionConfig(schedule="cosin"),
            "unknown noise schedule 'cosin'; choose one of",
        ),
        (lambda: DiffusionConfig(num_timesteps=0), "num_timesteps must be an integer >= 1"),
        (lambda: DiffusionConfig(var_type="big"), "unknown variance type 'big'"),
        (
            lambda: DiffusionConfig(loss="l1"),
            "unknown loss 'l1'; choose one of: hybrid, simple, vlb",
        ),
        (lambda: UNetConfig(image_size=12), "image_size 12 is not divisible by 8"),
        (lambda: UNetConfig(model_channels=40), "not divisible by num_groups=32"),
        (lambda: UNetConfig(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (lambda: TrainConfig(batch_size=30, microbatch=4), "not divisible by --microbatch 4"),
        (lambda: TrainConfig(precision="fp8"), "unknown precision 'fp8'"),
        (lambda: TrainConfig(ema_rates=(1.5,)), "ema_rates must be values in"),
        (lambda: TrainConfig(lr=0.0), "lr must be > 0"),
        (lambda: EvalConfig(split="val"), "unknown split 'val'"),
        (
            lambda: ExperimentConfig(
                diffusion=DiffusionConfig(var_type="fixed-small"),
                model=UNetConfig(out_channels=6),
            ),
            "use out_channels=3",
        ),
        (
            lambda: DiffusionConfig(loss="simple"),
            "loss 'simple' cannot train the learned variance",
        ),
        (lambda: DiffusionConfig.from_dict({"steps": 3}), "unknown DiffusionConfig field"),
    ],
)
def test_bad_values_give_one_line_errors(build, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        build()
    assert "\n" not in str(err.value)


def test_sample_configs_written_before_the_registry_still_load() -> None:
    old = SampleConfig.from_dict({"num": 4, "steps": "10", "ddim": True, "eta": 0.3})
    assert (old.sampler, old.sampler_options) == ("ddim", {"eta": 0.3})
    plain = SampleConfig.from_dict({"num": 4, "ddim": False, "eta": 0.0})
    assert (plain.sampler, plain.sampler_options) == ("ancestral", {})
    assert SampleConfig.from_dict(old.to_dict()) == old


def test_output_channels_are_derived_from_the_variance_type() -> None:
    learned = ExperimentConfig()
    assert learned.model.out_channels == 6  # ε and v per RGB channel
    fixed = ExperimentConfig(diffusion=DiffusionConfig(var_type="fixed-large"))
    assert fixed.model.out_channels == 3
    stored = learned.to_dict()
    assert "out_channels" not in stored["model"]  # derived, so a changed --sigma re-derives
    stored["diffusion"]["var_type"] = "fixed-small"
    assert ExperimentConfig.from_dict(stored).model.out_channels == 3
    old = learned.to_dict()
    old["model"]["out_channels"] = 6  # config files written before the rule still load
    assert ExperimentConfig.from_dict(old) == learned


def test_differences_lists_each_differing_field_with_both_values() -> None:
    a = ExperimentConfig()
    assert differences(a, ExperimentConfig.from_dict(a.to_dict())) == []
    b = a.replace(
        model=a.model.replace(channel_mult=(1, 2)), train=a.train.replace(lr=3e-4, steps=7)
    )
    assert differences(a, b) == [
        ("model", "channel_mult", list(a.model.channel_mult), [1, 2]),
        ("train", "lr", a.train.lr, 3e-4),
        ("train", "steps", a.train.steps, 7),
    ]
