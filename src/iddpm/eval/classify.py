"""The bound as a classifier: a class-conditional model's bound on log p(x | y) for every
class y, and the Bayes rule on it.

`class_bounds` runs `evaluate_nll` (eval/nll.py) once per class with every image labelled
y. Image i's noise (and, for the Monte-Carlo estimate, its steps) come from its own
generator seeded from (seed, i) whatever the label, so all classes see the same noise:
common random numbers, so differences between classes are not noise.
`ClassifyResult` turns the [N, K] table into predictions, accuracy, a confusion matrix,
per-class bits/dim and the label-marginal bound

    log p(x) >= log Σ_y p(y) exp(ELBO_y(x))

(each ELBO_y is a lower bound on log p(x | y), so the sum bounds p(x)), in bits/dim.
The class prior p(y) is uniform (1/K); the prediction is argmax_y ELBO_y + log p(y).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from iddpm.build import LoadedModel
from iddpm.config import EvalConfig
from iddpm.eval.nll import evaluate_nll


def class_bounds(
    loaded: LoadedModel,
    images: np.ndarray,
    cfg: EvalConfig,
    device: torch.device | str = "cpu",
    progress: Callable[[int], None] | None = None,
    reverse_variance: torch.Tensor | None = None,
) -> np.ndarray:
    """Bits/dim [N, K] float64 of uint8 NHWC `images` under the bound of `loaded` with
    label y (column y), for the model's K classes (its null class, if any, excluded)."""
    k = loaded.config.model.num_classes
    if k is None:
        raise ValueError(
            "classify needs a class-conditional model (trained with --class-cond); this "
            "one is unconditional"
        )
    cols = []
    for y in range(k):
        labels = np.full(len(images), y, dtype=np.int64)
        res = evaluate_nll(loaded, images, labels, cfg, device, progress, reverse_variance)
        cols.append(res.total_bpd)
    return np.stack(cols, axis=1).astype(np.float64)


@dataclass
class ClassifyResult:
    """Bits/dim of each image under each class [N, K], the true labels [N] and the number
    of dimensions D of an image."""

    bpd: np.ndarray
    labels: np.ndarray
    dims: int

    @property
    def num_classes(self) -> int:
        return self.bpd.shape[1]

    @property
    def log_prior(self) -> np.ndarray:
        return np.full(self.num_classes, -math.log(self.num_classes))

    @property
    def elbo_nats(self) -> np.ndarray:
        """ELBO_y(x) in nats [N, K]: −bpd · D · ln 2."""
        return -self.bpd * self.dims * math.log(2.0)

    @property
    def predicted(self) -> np.ndarray:
        return np.argmax(self.elbo_nats + self.log_prior, axis=1)

    @property
    def correct(self) -> np.ndarray:
        return (self.predicted == self.labels).astype(np.float64)

    def confusion(self) -> np.ndarray:
        """[K, K] counts: row = true class, column = predicted class."""
        k = self.num_classes
        out = np.zeros((k, k), dtype=np.int64)
        np.add.at(out, (self.labels, self.predicted), 1)
        return out

    def marginal_bpd(self) -> np.ndarray:
        """[N] bits/dim of the label-marginal bound −log Σ_y p(y) exp(ELBO_y) / (D ln 2)."""
        z = self.elbo_nats + self.log_prior
        top = z.max(axis=1, keepdims=True)
        log_px = (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]
        return -log_px / (self.dims * math.log(2.0))

    def summary(self) -> dict[str, Any]:
        n, correct = len(self.labels), self.correct
        true_bpd = self.bpd[np.arange(n), self.labels]
        per_class = [
            float(true_bpd[self.labels == y].mean()) if (self.labels == y).any() else None
            for y in range(self.num_classes)
        ]
        marginal = self.marginal_bpd()
        return {
            "accuracy": float(correct.mean()),
            "accuracy_stderr": float(correct.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
            "num_images": n,
            "bpd_true_label": float(true_bpd.mean()),
            "marginal_bpd": float(marginal.mean()),
            "marginal_bpd_stderr": float(marginal.std(ddof=1) / math.sqrt(n)) if n > 1 else None,
            "per_class_bpd": per_class,
            "confusion": self.confusion().tolist(),
        }
