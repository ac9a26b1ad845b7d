"""Guidance requests checked against the model before any work (workflows/guidance.py):
guidance on a model without a null class, scales that are not finite numbers >= 0, and
classifiers made for another image size, channel count, class count or process; the
transform a request gives and what it reports as its cost."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_random_run, tiny_experiment
from iddpm.build import load_model, spaced
from iddpm.config import SampleConfig
from iddpm.workflows.guidance import (
    check_guidance,
    guidance_label,
    guidance_summary,
    guidance_tag,
    guidance_transform,
    label_classes,
    load_classifier,
    requested_class_accuracy,
)
from iddpm.workflows.train_classifier import classifier_config


def _cond_cfg(dropout: float = 0.1, classes: int = 3):
    cfg = tiny_experiment(num_classes=classes)
    return cfg.replace(train=cfg.train.replace(class_dropout=dropout))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("guidance")
    cond = _cond_cfg()
    made = {
        "cond": cond,
        "plain": _cond_cfg(0.0),
        "uncond": tiny_experiment(),
        "clf": classifier_config(cond),
        "clf4": classifier_config(_cond_cfg(classes=4)),
        "clf_t": classifier_config(
            cond.replace(diffusion=cond.diffusion.replace(num_timesteps=30))
        ),
    }
    for name, cfg in made.items():
        save_random_run(root / name, cfg)
    return {name: root / name for name in made}


@pytest.mark.parametrize("flag", ["guidance_scale", "classifier_scale"])
@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf])
def test_scales_must_be_finite_and_non_negative(flag: str, bad: float) -> None:
    name = "--" + flag.replace("_", "-")
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        SampleConfig(**{flag: bad})


def test_classifier_free_guidance_needs_the_null_class(runs) -> None:
    with pytest.raises(ValueError, match="needs a class-conditional model; this one is unc"):
        check_guidance(load_model(runs["uncond"]), SampleConfig(guidance_scale=2.0))
    with pytest.raises(ValueError, match="trained with class dropout"):
        check_guidance(load_model(runs["plain"]), SampleConfig(guidance_scale=2.0))
    check_guidance(load_model(runs["plain"]), SampleConfig(guidance_scale=1.0))  # no guidance
    check_guidance(load_model(runs["cond"]), SampleConfig(guidance_scale=2.0))


@pytest.mark.parametrize(
    ("clf", "what"), [("clf4", "class count 4"), ("clf_t", "diffusion steps T 30")]
)
def test_a_classifier_for_another_model_is_refused(runs, clf: str, what: str) -> None:
    with pytest.raises(ValueError, match=f"was trained for {what}, the model has"):
        load_classifier(runs[clf], load_model(runs["cond"]))


def test_runs_of_the_other_kind_are_refused(runs) -> None:
    with pytest.raises(ValueError, match="holds a noise-aware classifier, not a diffusion"):
        load_model(runs["clf"])
    with pytest.raises(ValueError, match="holds a diffusion model, not a classifier"):
        load_classifier(runs["cond"], load_model(runs["cond"]))


def test_a_request_becomes_one_transform_of_the_model_function(runs) -> None:
    loaded = load_model(runs["cond"])
    clf = load_classifier(runs["clf"], loaded)
    diffusion, adapter = spaced(loaded.model, loaded.config.diffusion, "5")
    assert guidance_transform(loaded, SampleConfig(), diffusion, adapter, False) is None
    request = SampleConfig(guidance_scale=2.0, classifier=str(runs["clf"]), classifier_scale=3)
    transform = guidance_transform(loaded, request, diffusion, adapter, False, clf)
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 3, 4]), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        out = transform(adapter)(x, t, y=y)
    assert out.shape == (4, 2, 8, 8) and bool(torch.isfinite(out).all())
    assert label_classes(loaded, clf) == 3
    assert label_classes(load_model(runs["uncond"]), clf) == 3
    cost = guidance_summary(request, calls=5, ode=False)
    assert cost["network_rows_per_sample"] == 10 and cost["classifier_form"] == "mean"
    assert guidance_summary(SampleConfig(), 5, True)["network_rows_per_sample"] == 5


def test_guided_requests_are_named_in_tables_and_files() -> None:
    assert guidance_label(SampleConfig()) == guidance_tag(SampleConfig()) == ""
    both = SampleConfig(guidance_scale=2.5, classifier="c", classifier_scale=0.0)
    assert guidance_label(both) == " W=2.5 S=0" and guidance_tag(both) == "_w2.5_clf0"
    assert guidance_summary(both, 4, True)["classifier_calls_per_sample"] == 0


def test_requested_class_accuracy_counts_agreement() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert requested_class_accuracy(probs, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert requested_class_accuracy(probs, None) is None
