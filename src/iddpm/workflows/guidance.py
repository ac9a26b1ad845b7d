"""Guidance for sampling jobs: the request's guidance settings (SampleConfig's
guidance_scale, classifier, classifier_scale) checked against the model and turned into
one model-function transform (diffusion/guidance.py) that the sampling plan applies after
the respacing adapter, so every sampler of the registry is guided.

Checks, all before any work (docs/design.md §4): classifier-free guidance (W != 1) needs a
class-conditional model trained with class dropout (its null class); a classifier must be
a run of `iddpm train-classifier` with the model's image size, channels, diffusion
process (T, schedule, timestep scaling) and, for a conditional model, its classes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iddpm.build import LoadedModel, load_model
from iddpm.config import SampleConfig
from iddpm.diffusion.gaussian import GaussianDiffusion
from iddpm.diffusion.guidance import (
    classifier_free,
    classifier_guided,
    form_for,
    rows_per_call,
)
from iddpm.diffusion.respace import ModelAdapter

ModelFn = Callable[..., torch.Tensor]
Transform = Callable[[ModelFn], ModelFn]


def check_guidance(loaded: LoadedModel, request: SampleConfig) -> None:
    """Classifier-free guidance is possible for this model (one-line ValueError if not)."""
    mcfg = loaded.config.model
    if request.guidance_scale == 1.0:
        return
    if mcfg.num_classes is None:
        raise ValueError(
            f"--guidance-scale {request.guidance_scale:g} needs a class-conditional model; "
            "this one is unconditional (use --classifier RUN for classifier guidance)"
        )
    if not mcfg.null_class:
        raise ValueError(
            f"--guidance-scale {request.guidance_scale:g} needs a model trained with class "
            "dropout (its null class); this one has none: train with --class-dropout 0.1 "
            "(e.g. --preset digits-cond), or drop --guidance-scale"
        )


def load_classifier(
    path: str | Path, loaded: LoadedModel, device: torch.device | str = "cpu"
) -> LoadedModel:
    """The noise-aware classifier of run `path` (EMA weights), checked against `loaded`."""
    clf = load_model(path, use_ema=True, device=device, classifier=True)
    m, c = loaded.config, clf.config
    pairs = (
        ("image size", m.model.image_size, c.model.image_size),
        ("channel count", m.model.in_channels, c.model.in_channels),
        ("diffusion steps T", m.diffusion.num_timesteps, c.diffusion.num_timesteps),
        ("noise schedule", m.diffusion.schedule, c.diffusion.schedule),
        ("timestep scaling", m.diffusion.rescale_timesteps, c.diffusion.rescale_timesteps),
    )
    if m.model.num_classes is not None:
        pairs += (("class count", m.model.num_classes, c.model.num_classes),)
    for what, want, got in pairs:
        if want != got:
            raise ValueError(
                f"--classifier {path} was trained for {what} {got}, the model has {want}; "
                "train one for this model with `iddpm train-classifier --model RUN`"
            )
    clf.model.requires_grad_(False)
    return clf


def label_classes(loaded: LoadedModel, classifier: LoadedModel | None) -> int | None:
    """How many classes samples are labelled with: the model's, else the classifier's
    (an unconditional model guided by a classifier), else None (no labels)."""
    if loaded.config.model.num_classes is not None:
        return loaded.config.model.num_classes
    return None if classifier is None else classifier.config.model.num_classes


def guidance_transform(
    loaded: LoadedModel,
    request: SampleConfig,
    diffusion: GaussianDiffusion,
    adapter: ModelAdapter,
    ode: bool,
    classifier: LoadedModel | None = None,
) -> Transform | None:
    """The request's guidance as one transform of the (respaced) model function, or None
    when it asks for none. diffusion, adapter: the process the sampler runs and its
    respacing adapter (the classifier sees timesteps exactly as the network does);
    ode: the sampler is deterministic (classifier guidance then takes the ε form)."""
    check_guidance(loaded, request)
    mcfg, dcfg = loaded.config.model, loaded.config.diffusion
    cfg_on = request.guidance_scale != 1.0
    if not cfg_on and classifier is None:
        return None
    clf_fn = None
    if classifier is not None:
        clf_fn = ModelAdapter(classifier.model, adapter.timestep_map, adapter.scale)

    def transform(model_fn: ModelFn) -> ModelFn:
        fn = model_fn
        if cfg_on:
            assert mcfg.num_classes is not None
            fn = classifier_free(
                fn, request.guidance_scale, mcfg.num_classes, learned_sigma=dcfg.learn_sigma
            )
        if clf_fn is not None:
            fn = classifier_guided(
                fn,
                diffusion,
                clf_fn,
                request.classifier_scale,
                form_for(ode),
                pass_label=mcfg.num_classes is not None,
            )
        return fn

    return transform


def guidance_summary(request: SampleConfig, calls: int, ode: bool) -> dict[str, Any]:
    """What a guided sample cost and how it was guided, for result JSON: network rows
    per sample (calls × 2 when classifier-free guidance runs both branches) and
    classifier evaluations (forward + backward) per sample."""
    rows = rows_per_call(request.guidance_scale)
    out: dict[str, Any] = {
        "guidance_scale": request.guidance_scale,
        "network_calls": calls,
        "network_rows_per_sample": calls * rows,
    }
    if request.classifier:
        out.update(
            classifier=request.classifier,
            classifier_scale=request.classifier_scale,
            classifier_form=form_for(ode).value,
            classifier_calls_per_sample=calls if request.classifier_scale else 0,
        )
    return out


def guidance_tag(request: SampleConfig) -> str:
    """File-name suffix of a guided request ("" when unguided): _w<W>, _clf<S>."""
    tag = "" if request.guidance_scale == 1.0 else f"_w{request.guidance_scale:g}"
    return tag + (f"_clf{request.classifier_scale:g}" if request.classifier else "")


def guidance_label(request: SampleConfig) -> str:
    """How tables and plots name a guided request (" W=3", " W=0 S=2"; "" unguided)."""
    text = "" if request.guidance_scale == 1.0 else f" W={request.guidance_scale:g}"
    return text + (f" S={request.classifier_scale:g}" if request.classifier else "")


def requested_class_accuracy(probs: np.ndarray, labels: np.ndarray | None) -> float | None:
    """Share of samples that a classifier's probabilities [N, K] label as the class each
    was asked for (None without labels)."""
    if labels is None or len(labels) == 0:
        return None
    return float((np.asarray(probs).argmax(axis=1) == np.asarray(labels)).mean())


def class_rows(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Images [N, H, W, C] reordered by class (stable): with as many per class as there
    are columns, a grid of them has one row per class."""
    return images[np.argsort(np.asarray(labels), kind="stable")]
