"""The bound as a classifier (eval/classify.py) on the two-class Gaussian mixture, whose
exact class-conditional denoiser (conftest.mixture_oracle) makes the bound nearly tight:
the diffusion classifier's accuracy equals the Bayes classifier's within its standard
error, and the summary's algebra (confusion, label-marginal bound) is checked by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import mixture_oracle
from iddpm.build import LoadedModel, build_diffusion
from iddpm.config import DiffusionConfig, EvalConfig, ExperimentConfig, TrainConfig, UNetConfig
from iddpm.eval.classify import ClassifyResult, class_bounds

MUS, S, N = (-0.1, 0.1), 0.2, 400


def _mixture_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images [n, 2, 2, 1] of x0 | y ~ N(mus[y], s² I), y uniform, and y."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.as_tensor(MUS)[y].reshape(-1, 1, 1, 1) + S * torch.randn(n, 2, 2, 1, generator=g)
    img = torch.round((x.clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
    return img.numpy(), y.numpy()


def _oracle_run(var_type: str = "learned-range") -> LoadedModel:
    cfg = ExperimentConfig(
        diffusion=DiffusionConfig(num_timesteps=100, var_type=var_type, rescale_timesteps=False),
        model=UNetConfig(image_size=2, in_channels=1, channel_mult=(1,), num_classes=2),
        train=TrainConfig(class_cond=True),
    )
    model = mixture_oracle(build_diffusion(cfg.diffusion), MUS, S)
    return LoadedModel(cfg, model, Path("mixture-oracle"))


def test_diffusion_classifier_matches_the_bayes_classifier() -> None:
    images, labels = _mixture_data(N)
    bpd = class_bounds(_oracle_run(), images, EvalConfig(batch_size=200, timestep_batch=25))
    res = ClassifyResult(bpd, labels, dims=4)
    x0 = images.astype(np.float64).reshape(N, -1) / 127.5 - 1
    log_lik = -((x0[:, None, :] - np.asarray(MUS)[None, :, None]) ** 2).sum(-1) / (2 * S**2)
    bayes = (log_lik.argmax(1) == labels).astype(np.float64)
    diff = res.correct - bayes
    se = max(diff.std(ddof=1) / math.sqrt(N), 1 / N)
    assert 0.7 < bayes.mean() < 0.95  # the classes overlap: the test can tell them apart
    assert abs(diff.mean()) <= 3 * se, (res.correct.mean(), bayes.mean(), se)


def test_an_unconditional_model_cannot_classify() -> None:
    run = _oracle_run()
    cfg = run.config
    uncond = cfg.replace(model=cfg.model.replace(num_classes=None), train=TrainConfig())
    with pytest.raises(ValueError, match="classify needs a class-conditional model"):
        class_bounds(
            LoadedModel(uncond, run.model, run.checkpoint), *_mixture_data(2)[:1], EvalConfig()
        )


def test_summary_counts_and_marginal_bound_by_hand() -> None:
    # two classes, D = 1: image 0 (label 0) has bpd (1, 2), image 1 (label 1) has (1, 3).
    res = ClassifyResult(np.array([[1.0, 2.0], [1.0, 3.0]]), np.array([0, 1]), dims=1)
    s = res.summary()
    assert s["accuracy"] == 0.5 and s["confusion"] == [[1, 0], [1, 0]]
    assert s["per_class_bpd"] == [1.0, 3.0]
    ln2 = math.log(2)
    want0 = -math.log(0.5 * 2**-1 + 0.5 * 2**-2) / ln2  # −log2 Σ_y ½ 2^(−bpd_y)
    assert res.marginal_bpd()[0] == pytest.approx(want0, rel=1e-12)
    assert all(res.marginal_bpd() <= res.bpd.min(1) + 1 + 1e-12)  # log2 K above the best class
