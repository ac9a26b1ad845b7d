"""The noise-aware classifier (model/classifier.py): logits of the right shape, an untrained
one says "uniform", it shares the UNet's encoder layout, and, trained by the ordinary
trainer with `classifier_losses` on two classes of images, its accuracy falls as t grows
and is at chance at t = T − 1 (where x_t carries almost nothing of x0)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import tiny_experiment
from iddpm.build import build_diffusion, build_timestep_sampler, build_unet
from iddpm.data.loader import ImageBatches
from iddpm.diffusion.losses import classifier_losses
from iddpm.diffusion.respace import ModelAdapter, timestep_scale
from iddpm.model.classifier import NoiseAwareClassifier
from iddpm.train.trainer import Trainer
from iddpm.workflows.train_classifier import classifier_config


def _config(classes: int = 2, T: int = 50):
    base = tiny_experiment(num_timesteps=T, num_classes=classes)
    cfg = classifier_config(base)
    return cfg.replace(train=cfg.train.replace(batch_size=64, lr=2e-3, ema_rates=(0.9,)))


def test_untrained_classifier_is_uniform_and_shares_the_unet_encoder() -> None:
    cfg = _config(classes=5)
    net = build_unet(cfg.model)
    assert isinstance(net, NoiseAwareClassifier)
    logits = net(torch.randn(3, 1, 8, 8), torch.tensor([0.0, 10.0, 900.0]))
    assert logits.shape == (3, 5) and torch.equal(logits, torch.zeros(3, 5))
    unet = build_unet(cfg.model.replace(classifier=False, num_classes=None))
    shared = {k: v.shape for k, v in unet.state_dict().items() if k.startswith("encoder.")}
    assert shared == {k: v.shape for k, v in net.state_dict().items() if k.startswith("encoder.")}


def test_classifier_needs_labels_and_two_classes() -> None:
    with pytest.raises(ValueError, match="a classifier needs num_classes >= 2"):
        _config(classes=1)
    d = build_diffusion(_config().diffusion)
    with pytest.raises(ValueError, match="the batch has no labels"):
        classifier_losses(lambda x, t: x, d, torch.zeros(2, 1, 8, 8), torch.zeros(2).long(),
                          torch.zeros(2, 1, 8, 8))  # fmt: skip


@pytest.mark.slow
def test_trained_accuracy_falls_with_t_and_is_chance_at_the_last_step() -> None:
    # Two classes of 8×8 images: a bright left half or a bright right half, plus pixel noise.
    g = np.random.default_rng(0)
    n, T = 512, 50
    labels = g.integers(0, 2, n)
    x = g.normal(0.0, 0.15, (n, 8, 8, 1))
    x[labels == 0, :, :4] += 0.6
    x[labels == 1, :, 4:] += 0.6
    images = np.clip((x + 1) * 127.5, 0, 255).astype(np.uint8)
    cfg = _config(T=T)
    torch.manual_seed(0)
    net = build_unet(cfg.model)
    diffusion = build_diffusion(cfg.diffusion)
    trainer = Trainer(
        net,
        diffusion,
        ImageBatches(images, labels, 64, seed=0),
        build_timestep_sampler(cfg.diffusion),
        cfg,
        device="cpu",
        losses=classifier_losses,
    )
    trainer.run(num_steps=60)
    fn = ModelAdapter(net.eval(), scale=timestep_scale(T, cfg.diffusion.rescale_timesteps))
    x0 = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.as_tensor(labels)
    acc = {}
    for t in (0, T // 2, T - 1):
        tt = torch.full((n,), t)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
        with torch.no_grad():
            logits = fn(diffusion.q_sample(x0, tt, noise), tt)
        acc[t] = float((logits.argmax(1) == y).float().mean())
    se = math.sqrt(0.25 / n)
    assert acc[0] > 0.95, acc
    assert acc[0] >= acc[T // 2] - 3 * se and acc[T // 2] >= acc[T - 1] - 3 * se, acc
    assert abs(acc[T - 1] - 0.5) < 4 * se, acc  # chance: x_{T-1} is almost pure noise
