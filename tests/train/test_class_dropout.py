"""Class dropout (Ho & Salimans 2022): the config derives the null-class row, the
embedding table has it, labels are dropped at rate P independently of the rank count,
and configs and checkpoints written before it existed still load."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_experiment
from iddpm.build import build_unet
from iddpm.config import ExperimentConfig
from iddpm.presets import get_preset
from iddpm.train.rules import drop_labels


def test_class_dropout_gives_the_model_its_null_row() -> None:
    cfg = tiny_experiment(num_classes=3)
    assert not cfg.model.null_class
    drop = cfg.replace(train=cfg.train.replace(class_dropout=0.2))
    assert drop.model.null_class
    assert build_unet(drop.model).class_embed.num_embeddings == 4
    assert build_unet(cfg.model).class_embed.num_embeddings == 3
    assert ExperimentConfig.from_dict(drop.to_dict()) == drop


def test_old_class_conditional_configs_load_without_a_null_row() -> None:
    d = tiny_experiment(num_classes=3).to_dict()
    del d["model"]["null_class"], d["train"]["class_dropout"]  # written before they existed
    cfg = ExperimentConfig.from_dict(d)
    assert not cfg.model.null_class and cfg.train.class_dropout == 0.0


def test_digits_cond_preset_is_class_conditional_with_dropout() -> None:
    cfg = get_preset("digits-cond")
    assert cfg.model.num_classes == 10 and cfg.model.null_class
    assert cfg.train.class_cond and 0 < cfg.train.class_dropout < 1


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, math.nan, math.inf])
def test_class_dropout_outside_0_1_is_refused(p: float) -> None:
    cfg = tiny_experiment(num_classes=3)
    with pytest.raises(ValueError, match=r"class_dropout must be a probability in \[0, 1\)"):
        cfg.replace(train=cfg.train.replace(class_dropout=p))


def test_class_dropout_needs_a_class_conditional_model() -> None:
    cfg = tiny_experiment()
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        cfg.replace(train=cfg.train.replace(class_dropout=0.1))


def test_labels_are_dropped_at_rate_p_whatever_the_rank_count() -> None:
    n, p, null = 4096, 0.1, 10
    y = torch.arange(n) % 10
    whole = drop_labels(y, p, null, seed=3, step=7, lo=0, global_batch=n)
    halves = [drop_labels(y[lo : lo + n // 2], p, null, 3, 7, lo, n) for lo in (0, n // 2)]
    assert torch.equal(torch.cat(halves), whole)
    dropped = whole == null
    assert torch.equal(whole[~dropped], y[~dropped])  # kept labels are untouched
    rate = float(dropped.float().mean())
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert not torch.equal(drop_labels(y, p, null, 3, 8, 0, n), whole)  # a new draw per step
    assert torch.equal(drop_labels(y, 0.0, null, 3, 7, 0, n), y)
