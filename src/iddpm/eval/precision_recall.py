"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall
Metric for Assessing Generative Models"), the sample-quality metric of the paper's Section 5.

Each feature set approximates its distribution's manifold by the union of balls around its
points, each ball's radius the distance to that point's k-th nearest neighbour in the same
set (the point itself excluded; a duplicate of it counts). A feature is inside a manifold
when its distance to some point of that set is ≤ that point's radius (inclusive). Then

    precision = fraction of fake (generated) features inside the real manifold,
    recall    = fraction of real features inside the fake manifold.

k = 3 is the paper's value. Features are [N, D] arrays (numpy or torch) from any extractor
(`iddpm.eval.features`: digits by default, Inception when available); only sets from the same
extractor are comparable.

Numerics: squared distances ‖a‖² + ‖b‖² − 2a·b, in float64 (inputs are converted), compared
as squares (no square roots). float64 rather than float32 so that a point at the edge of a
ball is classified by the geometry, not by rounding (float32 would err by ~1e-7·‖a‖², which
for Inception features can exceed the gap between a point and a radius), at twice the
matmul cost. Work is done in blocks of `batch_size` × `batch_size` distances, so memory is
O(batch_size² + N·k) whatever N and M (a few 8 MiB buffers at the default 1024), and the
result does not depend on the block size. The k-nearest-neighbour radii cost O(N²·D) and O(M²·D),
the membership tests O(N·M·D) at most.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DEFAULT_BATCH_SIZE = 1024


@dataclass(frozen=True)
class PrecisionRecall:
    """Precision and recall in [0, 1], the k used and the sizes of the two feature sets."""

    precision: float
    recall: float
    k: int
    num_real: int
    num_fake: int


def _as_features(name: str, features: Any) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(features) if not torch.is_tensor(features) else features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"{name} features must be a non-empty [N, D] array, got shape {tuple(x.shape)}; "
            "pass one feature row per image"
        )
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} features contain NaN or inf; check the feature extractor")
    return x


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a_i − b_j‖² for a [B, D], b [C, D] → [B, C] float64, clamped at 0 (rounding)."""
    sq = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return sq.clamp_min_(0.0)


def knn_squared_radii(features: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Squared distance of each of N points to its k-th nearest other point: [N] float64.

    features: [N, D] float64 with N > k. The point itself is excluded by index, so an exact
    duplicate of it counts as a neighbour at distance 0.
    """
    n = features.shape[0]
    radii = torch.empty(n, dtype=torch.float64, device=features.device)
    for i0 in range(0, n, batch_size):
        rows = features[i0 : i0 + batch_size]
        best = torch.full((rows.shape[0], k), torch.inf, dtype=torch.float64, device=rows.device)
        for j0 in range(0, n, batch_size):
            d2 = _squared_distances(rows, features[j0 : j0 + batch_size])
            # exclude each point itself: global row index == global column index
            r = torch.arange(i0, i0 + rows.shape[0], device=rows.device)[:, None]
            c = torch.arange(j0, j0 + d2.shape[1], device=rows.device)[None, :]
            d2 = d2.masked_fill(r == c, torch.inf)
            # keep the k smallest seen so far (the block may have fewer than k columns)
            best = torch.cat([best, d2], dim=1).topk(k, dim=1, largest=False).values
        radii[i0 : i0 + rows.shape[0]] = best[:, k - 1]
    return radii


def fraction_inside(
    queries: torch.Tensor, reference: torch.Tensor, squared_radii: torch.Tensor, batch_size: int
) -> float:
    """Fraction of queries [M, D] within radius of some reference point [N, D] (radii² [N])."""
    inside = 0
    for i0 in range(0, queries.shape[0], batch_size):
        rows = queries[i0 : i0 + batch_size]
        hit = torch.zeros(rows.shape[0], dtype=torch.bool, device=rows.device)
        for j0 in range(0, reference.shape[0], batch_size):
            d2 = _squared_distances(rows, reference[j0 : j0 + batch_size])
            hit |= (d2 <= squared_radii[j0 : j0 + batch_size][None, :]).any(dim=1)
            if bool(hit.all()):
                break  # every query of this block is inside already
        inside += int(hit.sum())
    return inside / queries.shape[0]


def precision_recall(
    real_features: Any,
    fake_features: Any,
    k: int = 3,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> PrecisionRecall:
    """Improved precision and recall of fake [M, D] against real [N, D] features (module
    docstring). k: neighbours for the radii (3 in the paper), 1 ≤ k < min(N, M); batch_size:
    rows and columns per block of distances. Raises one-line ValueErrors for bad input."""
    real = _as_features("real", real_features)
    fake = _as_features("fake", fake_features)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(
            f"real features have {real.shape[1]} dimensions but fake ones {fake.shape[1]}; "
            "extract both with the same feature extractor"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}; the paper uses k = 3")
    n, m = real.shape[0], fake.shape[0]
    if k >= min(n, m):
        raise ValueError(
            f"k = {k} needs more than {k} real and fake features, got {n} real and {m} fake; "
            "pass more samples or a smaller k"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    fake = fake.to(real.device)
    real_radii = knn_squared_radii(real, k, batch_size)
    fake_radii = knn_squared_radii(fake, k, batch_size)
    precision = fraction_inside(fake, real, real_radii, batch_size)
    recall = fraction_inside(real, fake, fake_radii, batch_size)
    return PrecisionRecall(precision, recall, k, n, m)


def weighted_precision_recall(
    real_features: Any,
    fake_features: Any,
    weights: np.ndarray,
    k: int = 3,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall [R] for R weightings [M, R] of the fake rows (bootstrap
    replicates; column 0 all ones gives `precision_recall`'s values).

    The radii of both manifolds are those of the full sets (held fixed); replicate r's
    precision is the w_r-weighted share of fake rows inside the real manifold, its recall
    the share of real rows inside the balls of fake rows with w_r > 0. Membership of the
    real rows is kept as a bit matrix [N, M] (N·M/8 bytes: 12.5 MB at 10,000 each)."""
    real = _as_features("real", real_features)
    fake = _as_features("fake", fake_features).to(real.device)
    pr = precision_recall(real, fake, k=k, batch_size=batch_size)  # validates, replicate 0
    real_radii = knn_squared_radii(real, k, batch_size)
    fake_radii = knn_squared_radii(fake, k, batch_size)
    fake_inside = np.concatenate(
        [
            (_squared_distances(fake[i : i + batch_size], real) <= real_radii[None, :])
            .any(dim=1)
            .cpu()
            .numpy()
            for i in range(0, fake.shape[0], batch_size)
        ]
    )
    bits = np.concatenate(
        [
            np.packbits(
                (_squared_distances(real[i : i + batch_size], fake) <= fake_radii[None, :])
                .cpu()
                .numpy(),
                axis=1,
            )
            for i in range(0, real.shape[0], batch_size)
        ]
    )
    w = np.asarray(weights, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = (w * fake_inside[:, None]).sum(axis=0) / w.sum(axis=0)
    recall = np.array(
        [(bits & np.packbits(w[:, r] > 0)[None, :]).any(axis=1).mean() for r in range(w.shape[1])]
    )
    precision[0], recall[0] = pr.precision, pr.recall
    return precision, recall


__all__ = [
    "PrecisionRecall",
    "fraction_inside",
    "knn_squared_radii",
    "precision_recall",
    "weighted_precision_recall",
]
