"""Weighted running moments with a replicate axis: the streaming state of FID and sFID
under the Poisson bootstrap (`iddpm.eval.bootstrap`).

Replicate r keeps Σ_i w_ri f_i [D], Σ_i w_ri f_i f_iᵀ [D, D] and Σ_i w_ri in float64; with
one replicate of unit weights these are `FeatureStats`'s sums exactly. Memory is
R·(D² + D + 1)·8 bytes whatever the number of samples (digits, D = 64: 33 KB per replicate;
Inception, D = 2048: 32 MiB per replicate). States add, so shards and ranks combine by
summation in any order.
"""

from __future__ import annotations

import numpy as np

from iddpm.eval.fid import FeatureStats


class ReplicatedMoments:
    """Running weighted sums of features [N, D] for R replicates (module docstring)."""

    def __init__(self, dim: int, replicates: int, extractor: str = "") -> None:
        self.dim, self.replicates, self.extractor = dim, replicates, extractor
        self.sums = np.zeros((replicates, dim))
        self.outer = np.zeros((replicates, dim, dim))
        self.total = np.zeros(replicates)

    def add(self, features: np.ndarray, weights: np.ndarray) -> None:
        """features [n, D]; weights [n, R] (column 0 all ones for the estimate)."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim or weights.shape != (len(f), self.replicates):
            raise ValueError(
                f"features must be [n, {self.dim}] with weights [n, {self.replicates}], got "
                f"{f.shape} and {weights.shape}"
            )
        if not np.isfinite(f).all():
            raise ValueError("features contain NaN or inf; check the extractor's input images")
        self.sums += weights.T @ f
        self.total += weights.sum(axis=0)
        for r in range(self.replicates):
            w = weights[:, r]
            self.outer[r] += (f if r == 0 and (w == 1).all() else f * w[:, None]).T @ f

    def arrays(self) -> dict[str, np.ndarray]:
        return {"sums": self.sums, "outer": self.outer, "total": self.total}

    def load_arrays(self, arrays: dict[str, np.ndarray], add: bool = True) -> None:
        for key, value in self.arrays().items():
            other = np.asarray(arrays[key], dtype=np.float64)
            if other.shape != value.shape:
                raise ValueError(f"moment {key} has shape {other.shape}, expected {value.shape}")
            value[...] = value + other if add else other

    def stats(self) -> FeatureStats:
        """Replicate 0 (the unweighted estimate) as FeatureStats."""
        return FeatureStats(
            dim=self.dim,
            extractor=self.extractor,
            feature_sum=self.sums[0].copy(),
            outer_sum=self.outer[0].copy(),
            count=round(float(self.total[0])),
        )

    def distances_to(self, ref: FeatureStats) -> np.ndarray:
        """Fréchet distance of every replicate to the reference: [R].

        tr (Σ_r Σ_ref)^{1/2} = Σ √λ(Σ_ref^{1/2} Σ_r Σ_ref^{1/2}): one symmetric square root
        of the reference, then one eigvalsh per replicate (much cheaper than R sqrtm)."""
        mu_ref, sigma_ref = ref.mean(), ref.cov()
        w, v = np.linalg.eigh(sigma_ref)
        root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
        out = np.full(self.replicates, np.nan)
        for r in range(self.replicates):
            n = self.total[r]
            if n < 2:
                continue
            mu = self.sums[r] / n
            sigma = (self.outer[r] - n * np.outer(mu, mu)) / (n - 1)
            lam = np.linalg.eigvalsh(root @ ((sigma + sigma.T) / 2) @ root)
            diff = mu - mu_ref
            tr = np.sqrt(np.clip(lam, 0.0, None)).sum()
            out[r] = diff @ diff + np.trace(sigma) + np.trace(sigma_ref) - 2.0 * tr
        return out
