"""Fréchet distance between feature distributions, from streaming float64 statistics.

FID (Heusel et al. 2017) fits a Gaussian to the features of each image set and reports

    d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^{1/2}).

The statistics are kept as sufficient sums (Σf [D], Σffᵀ [D, D], n) in float64, so batches,
shards and ranks combine by plain addition and the result does not depend on how the images
were split. "Stats → distance" is the pure function `frechet_distance`.

Which feature space is used matters: Inception-v3 pool features give the FID that papers
report; the bundled-digits classifier (`iddpm.eval.features`) gives a "digits-fid" that is
only comparable with itself. Every `FeatureStats` records its extractor's name and two stats
from different extractors refuse to be compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import scipy.linalg

from iddpm._io import atomic_write

# Diagonal offset used when Σ₁Σ₂ is too close to singular for sqrtm (the usual fallback).
SQRTM_EPS = 1e-6
# Imaginary parts of tr sqrt(Σ₁Σ₂) above this (relative to its real part) mean the inputs
# were not covariance matrices rather than rounding noise.
MAX_RELATIVE_IMAG = 1e-3


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps uint8 images [N, H, W, C] to float64 features [N, dim].

    `name` labels the metric the features give (e.g. "digits-fid"); statistics computed with
    different names are not comparable. `comparable_to_inception` is True only for the
    Inception-v3 pool features that published FIDs use.
    """

    name: str
    dim: int
    comparable_to_inception: bool

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


@dataclass(eq=False)  # arrays inside: compare stats with fid_from_stats, not ==
class FeatureStats:
    """Sufficient statistics of a feature set: Σf [D], Σffᵀ [D, D] (float64) and n.

    Stats loaded from a reference file that holds only `mu`/`sigma` keep those moments as is;
    they can be compared but not extended (their n is unknown).
    """

    dim: int
    extractor: str = ""
    feature_sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    outer_sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    count: int = 0
    _moments: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.feature_sum is None:
            self.feature_sum = np.zeros(self.dim, dtype=np.float64)
        if self.outer_sum is None:
            self.outer_sum = np.zeros((self.dim, self.dim), dtype=np.float64)
        d = self.dim
        if self.feature_sum.shape != (d,) or self.outer_sum.shape != (d, d):
            raise ValueError(
                f"feature_sum must be [D] and outer_sum [D, D], got {self.feature_sum.shape} "
                f"and {self.outer_sum.shape}; check the statistics file"
            )
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ValueError(f"count must be an integer >= 0, got {self.count!r}")
        if not (np.isfinite(self.feature_sum).all() and np.isfinite(self.outer_sum).all()):
            raise ValueError("statistics hold NaN or inf; make them again from images")

    @classmethod
    def from_moments(cls, mu: np.ndarray, sigma: np.ndarray, extractor: str = "") -> FeatureStats:
        """Reference stats given only by mean [D] and covariance [D, D]."""
        mu = np.asarray(mu, dtype=np.float64)
        sigma = np.asarray(sigma, dtype=np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(
                f"mu must be [D] and sigma [D, D], got {mu.shape} and {sigma.shape}; "
                "check the reference statistics file"
            )
        if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise ValueError(
                "mu/sigma hold NaN or inf; make the reference statistics again from images"
            )
        return cls(dim=mu.shape[0], extractor=extractor, _moments=(mu, sigma))

    def _check_extendable(self, what: str) -> None:
        if self._moments is not None:
            raise ValueError(
                f"cannot {what} stats loaded from mu/sigma only (their count is unknown); "
                "recompute them from images"
            )

    def add(self, features: np.ndarray) -> FeatureStats:
        """Accumulate a batch of features [N, D] (any float dtype; summed in float64)."""
        self._check_extendable("add features to")
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features must be [N, {self.dim}], got shape {f.shape}")
        if not np.isfinite(f).all():
            raise ValueError("features contain NaN or inf; check the extractor's input images")
        self.feature_sum += f.sum(axis=0)
        self.outer_sum += f.T @ f
        self.count += f.shape[0]
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Stats of the union of both feature sets (a new object)."""
        self._check_extendable("merge")
        other._check_extendable("merge")
        _check_same_space(self, other)
        return FeatureStats(
            dim=self.dim,
            extractor=self.extractor or other.extractor,
            feature_sum=self.feature_sum + other.feature_sum,
            outer_sum=self.outer_sum + other.outer_sum,
            count=self.count + other.count,
        )

    __add__ = merge

    def all_reduce(self) -> FeatureStats:
        """Stats summed over all ranks (a new object; this one when not distributed).

        One collective on a flat float64 buffer [D + D² + 1]; counts stay exact below 2⁵³.
        """
        self._check_extendable("all-reduce")
        import torch

        from iddpm import distributed

        flat = np.concatenate([self.feature_sum, self.outer_sum.ravel(), [float(self.count)]])
        buf = torch.from_numpy(flat).to(distributed.device())  # nccl reduces GPU tensors only
        total = distributed.all_reduce_sum(buf).cpu().numpy()
        d = self.dim
        return FeatureStats(
            dim=d,
            extractor=self.extractor,
            feature_sum=total[:d].copy(),
            outer_sum=total[d : d + d * d].reshape(d, d).copy(),
            count=round(float(total[-1])),
        )

    def mean(self) -> np.ndarray:
        """μ [D] float64."""
        if self._moments is not None:
            return self._moments[0]
        if self.count < 1:
            raise ValueError("no features were added; call add() with at least one batch")
        return self.feature_sum / self.count

    def cov(self) -> np.ndarray:
        """Unbiased covariance Σ = (Σffᵀ − n μμᵀ)/(n − 1), [D, D] float64."""
        if self._moments is not None:
            return self._moments[1]
        if self.count < 2:
            raise ValueError(
                f"covariance needs at least 2 feature vectors, got {self.count}; add more images"
            )
        mu = self.feature_sum / self.count
        sigma = (self.outer_sum - self.count * np.outer(mu, mu)) / (self.count - 1)
        return (sigma + sigma.T) / 2  # exact symmetry despite rounding

    def save(self, path: str | Path) -> Path:
        """Write an .npz with `mu`, `sigma` (the common reference layout), the raw sums,
        `count` and `extractor`. Returns the path written."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"extractor": np.array(self.extractor)}
        if self._moments is None:
            arrays.update(
                feature_sum=self.feature_sum,
                outer_sum=self.outer_sum,
                count=np.array(self.count, dtype=np.int64),
            )
        if self._moments is not None or self.count >= 2:
            arrays.update(mu=self.mean(), sigma=self.cov())
        # an open file keeps numpy from appending ".npz"; atomic: no partial file on failure
        return atomic_write(path, lambda fh: np.savez(fh, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read stats saved by `save`, or any .npz with `mu` [D] and `sigma` [D, D] keys."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature statistics file {path} does not exist")
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            extractor = str(data["extractor"]) if "extractor" in keys else ""
            if {"feature_sum", "outer_sum", "count"} <= keys:
                s, count = data["feature_sum"].astype(np.float64), data["count"]
                if s.ndim != 1 or count.shape != () or count.dtype.kind not in "iu":
                    raise ValueError(
                        f"{path}: feature_sum must be [D] and count one integer, got shapes "
                        f"{s.shape} and {count.shape}; recompute the statistics"
                    )
                try:
                    return cls(
                        dim=s.shape[0],
                        extractor=extractor,
                        feature_sum=s,
                        outer_sum=data["outer_sum"].astype(np.float64),
                        count=int(count),
                    )
                except ValueError as e:
                    raise ValueError(f"{path}: {e}") from None
            if {"mu", "sigma"} <= keys:
                try:
                    return cls.from_moments(data["mu"], data["sigma"], extractor)
                except ValueError as e:
                    raise ValueError(f"{path}: {e}") from None
        raise ValueError(
            f"{path} holds keys {sorted(keys)}; expected mu and sigma "
            "(or feature_sum, outer_sum, count as written by FeatureStats.save)"
        )


def _check_same_space(a: FeatureStats, b: FeatureStats) -> None:
    if a.dim != b.dim:
        raise ValueError(f"feature dimensions differ ({a.dim} vs {b.dim}); use one extractor")
    if a.extractor and b.extractor and a.extractor != b.extractor:
        raise ValueError(
            f"statistics come from different extractors ({a.extractor!r} vs {b.extractor!r}); "
            "recompute both with the same one"
        )


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(μ₁, Σ₁) and N(μ₂, Σ₂) (squared units of the features).

    ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{1/2}. The square root is scipy's `sqrtm`; when
    Σ₁Σ₂ is numerically singular (non-finite root), SQRTM_EPS is added to both diagonals.
    Rounding leaves a tiny imaginary part, which is dropped; a large one raises.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shapes disagree: mu1 {mu1.shape}, sigma1 {s1.shape}, mu2 {mu2.shape}, "
            f"sigma2 {s2.shape}; expected [D] and [D, D] with one D"
        )
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(d) * SQRTM_EPS
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    tr_covmean = np.trace(covmean)
    if np.iscomplexobj(covmean):
        if abs(tr_covmean.imag) > MAX_RELATIVE_IMAG * max(abs(tr_covmean.real), 1.0):
            raise ValueError(
                f"tr sqrt(Σ₁Σ₂) has imaginary part {tr_covmean.imag:.3g}; "
                "the sigmas are not positive semi-definite covariance matrices"
            )
        tr_covmean = tr_covmean.real
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    if not np.isfinite(value):
        raise ValueError("the Fréchet distance is not finite; the statistics hold NaN or inf")
    return value


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """`frechet_distance` of two stats from the same extractor."""
    _check_same_space(a, b)
    return frechet_distance(a.mean(), a.cov(), b.mean(), b.cov())
