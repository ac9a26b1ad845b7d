"""Every sample-quality metric of a generated set in one streaming pass.

`SampleScorer` takes batches of uint8 images with their global sample indices, runs the
feature extractor once per batch and keeps only running sums:

- FID (pool features) and sFID (spatial features): weighted moments, R·(D² + D) floats;
- Inception Score (logits): sums per part, R·splits·K floats;
- classifier confidence (the digits classifier only): counts;
- the pool features of the first `keep` samples (by global index, whatever the order the
  batches arrive in), for improved precision/recall and KID, whose cost grows with the
  square of the set: keep·D floats.

So memory is bounded by R·(D² + D_s²) + keep·D + one batch, independent of the number of
samples N (R = 1 + bootstrap replicates). Every state is additive: shards of a job and
ranks combine by summing `arrays()`, and summing them in shard order gives bitwise the same
result whatever the interruptions or the world size.

`values(ref)` gives every metric for every replicate ([R] arrays, index 0 the estimate);
`result(ref)` the estimates plus, with replicates, their basic bootstrap intervals. Two
sets scored with the same weights seed (same global indices) give paired replicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from iddpm.eval import bootstrap, inception_score, kid
from iddpm.eval.fid import FeatureExtractor, FeatureStats, fid_from_stats
from iddpm.eval.moments import ReplicatedMoments
from iddpm.eval.precision_recall import weighted_precision_recall

KEEP = 10_000  # rows kept for precision/recall and KID
PR_K = 3  # neighbours of the improved precision/recall (Kynkäänniemi et al. 2019)
CONFIDENT = 0.9
LOWER_IS_BETTER = {"fid": True, "sfid": True, "kid": True, "inception_score": False,
                   "precision": False, "recall": False}  # fmt: skip


@dataclass(frozen=True)
class ScoreOptions:
    """replicates: bootstrap replicates B (0: none); level: of the intervals; seed: of the
    bootstrap weights (the same for sets that are compared); splits: Inception-Score parts;
    kid_subsets/kid_subset_size: KID's subsets; keep: rows for precision/recall and KID."""

    replicates: int = 0
    level: float = bootstrap.LEVEL
    seed: int = 0
    splits: int = inception_score.SPLITS
    kid_subsets: int = kid.SUBSETS
    kid_subset_size: int = kid.SUBSET_SIZE
    keep: int = KEEP


@dataclass(frozen=True)
class ReferenceFeatures:
    """The reference side: pool statistics, spatial statistics (None: no sFID) and the pool
    features of up to `keep` reference images (None: no precision/recall or KID)."""

    stats: FeatureStats
    spatial: FeatureStats | None = None
    rows: np.ndarray | None = None


def extract(extractor: FeatureExtractor, images: np.ndarray) -> tuple:
    """(pool, spatial or None, logits or None) of uint8 images."""
    if hasattr(extractor, "extract"):
        e = extractor.extract(images)
        return e.pool, e.spatial, e.logits
    return np.asarray(extractor(images), np.float64), None, None


MAX_STATE_BYTES = 8 * 2**30  # the running sums of all replicates (Inception: ~64 MB each)


def check_memory(extractor: FeatureExtractor, replicates: int) -> None:
    """Refuse a bootstrap whose running sums would not fit MAX_STATE_BYTES."""
    d, ds = extractor.dim, getattr(extractor, "spatial_dim", None) or 0
    per = (d * d + ds * ds) * 8
    if (1 + replicates) * per > MAX_STATE_BYTES:
        most = MAX_STATE_BYTES // per - 1
        raise ValueError(
            f"--bootstrap {replicates} keeps {(1 + replicates) * per / 2**30:.1f} GiB of "
            f"running sums for the {extractor.name} features; use --bootstrap {most} or fewer"
        )


class SampleScorer:
    """Streaming state of every metric of N generated samples (module docstring)."""

    def __init__(self, extractor: FeatureExtractor, total: int, options: ScoreOptions) -> None:
        if total < 1:
            raise ValueError("no samples to score; pass a non-empty set of images")
        self.extractor, self.total, self.options = extractor, total, options
        r = 1 + options.replicates
        check_memory(extractor, options.replicates)
        self.pool = ReplicatedMoments(extractor.dim, r, extractor.name)
        spatial_dim = getattr(extractor, "spatial_dim", None)
        num_classes = getattr(extractor, "num_classes", None)
        sname = extractor.name.replace("fid", "sfid")
        self.spatial = ReplicatedMoments(spatial_dim, r, sname) if spatial_dim else None
        splits = min(options.splits, total)
        self.scores = (
            inception_score.ScoreSums(num_classes, total, splits, r) if num_classes else None
        )
        self.confidence = hasattr(extractor, "predict_proba") and num_classes is not None
        self.counts = np.zeros(2 + (num_classes or 0))  # confident, Σ max p, class histogram
        self.keep = min(options.keep, total)
        self.rows = np.zeros((self.keep, extractor.dim))
        self.filled = np.zeros(self.keep)

    def add(self, images: np.ndarray, start: int) -> None:
        """Score uint8 images [n, H, W, C], the samples start..start+n−1."""
        if len(images):
            self.add_features(*extract(self.extractor, images), start)

    def add_features(
        self,
        pool: np.ndarray,
        spatial: np.ndarray | None,
        logits: np.ndarray | None,
        start: int,
    ) -> None:
        """Accumulate what `extract` gave for the samples start..start+n−1."""
        n = len(pool)
        if start < 0 or start + n > self.total:
            raise ValueError(f"samples {start}..{start + n - 1} lie outside 0..{self.total - 1}")
        o = self.options
        w = bootstrap.poisson_weights(o.seed, start, start + n, o.replicates)
        self.pool.add(pool, w)
        if self.spatial is not None:
            self.spatial.add(spatial, w)
        if self.scores is not None:
            probs = inception_score.probabilities(logits)
            self.scores.add(probs, start, w)
            if self.confidence:
                top = probs.max(axis=1)
                self.counts[0] += (top >= CONFIDENT).sum()
                self.counts[1] += top.sum()
                self.counts[2:] += np.bincount(probs.argmax(axis=1), minlength=probs.shape[1])
        hi = min(start + n, self.keep)
        if start < hi:
            self.rows[start:hi] = pool[: hi - start]
            self.filled[start:hi] += 1

    # ---- state: shards and ranks add up -----------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"pool.{k}": v for k, v in self.pool.arrays().items()}
        if self.spatial is not None:
            out |= {f"spatial.{k}": v for k, v in self.spatial.arrays().items()}
        if self.scores is not None:
            out |= {f"is.{k}": v for k, v in self.scores.arrays().items()}
        return out | {"counts": self.counts, "rows": self.rows, "filled": self.filled}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Add a saved state (of another shard or rank) to this one."""
        for key, value in self.arrays().items():
            if key not in arrays or np.shape(arrays[key]) != value.shape:
                raise ValueError(f"score state lacks {key} of shape {value.shape}")
            value += np.asarray(arrays[key], dtype=np.float64)

    def all_reduce(self) -> None:
        """Sum the state over ranks (nothing to do without a process group)."""
        from iddpm import distributed

        if distributed.world_size() == 1:
            return
        import torch

        items = list(self.arrays().values())
        flat = np.concatenate([a.ravel() for a in items])
        total = distributed.all_reduce_sum(torch.from_numpy(flat).to(distributed.device()))
        total = total.cpu().numpy()
        offset = 0
        for a in items:
            a[...] = total[offset : offset + a.size].reshape(a.shape)
            offset += a.size

    # ---- results ------------------------------------------------------------------------
    def stats(self) -> FeatureStats:
        return self.pool.stats()

    def spatial_stats(self) -> FeatureStats | None:
        return self.spatial.stats() if self.spatial is not None else None

    def values(self, ref: ReferenceFeatures) -> dict[str, np.ndarray]:
        """Every metric for every replicate: {name: [R]} (index 0: the estimate)."""
        if self.filled.min(initial=1) != 1:
            raise ValueError("not every sample was scored exactly once; score each index once")
        out: dict[str, np.ndarray] = {"fid": self.pool.distances_to(ref.stats)}
        out["fid"][0] = fid_from_stats(self.stats(), ref.stats)
        if self.spatial is not None and ref.spatial is not None:
            out["sfid"] = self.spatial.distances_to(ref.spatial)
            out["sfid"][0] = fid_from_stats(self.spatial.stats(), ref.spatial)
        if self.scores is not None:
            out["inception_score"] = self.scores.scores().mean(axis=1)
        if ref.rows is not None and min(len(ref.rows), self.keep) > PR_K:
            o = self.options
            w = bootstrap.poisson_weights(o.seed, 0, self.keep, o.replicates)
            out["precision"], out["recall"] = weighted_precision_recall(
                ref.rows, self.rows, w, k=PR_K
            )
            per_subset = kid.kid_replicates(
                ref.rows, self.rows, w, o.kid_subsets, o.kid_subset_size
            )
            out["kid"] = per_subset.mean(axis=1)
            out["kid_std"] = np.full(len(w.T), per_subset[0].std())  # over subsets
        return out

    def result(
        self, ref: ReferenceFeatures, values: dict[str, np.ndarray] | None = None
    ) -> dict[str, Any]:
        """The metrics (None where the inputs do not allow one) and, with replicates, the
        bootstrap interval of each under "intervals"; `values`: what `values(ref)` gave,
        when the caller has it already."""
        values = dict(self.values(ref) if values is None else values)
        out: dict[str, Any] = {"num_samples": self.total}
        for name in ("fid", "sfid", "inception_score", "kid", "precision", "recall"):
            out[name] = float(values[name][0]) if name in values else None
        if self.scores is not None:
            out["inception_score_std"] = float(self.scores.scores()[0].std())
        if "kid" in values:
            out["kid_std"] = float(values.pop("kid_std")[0])
        if self.confidence:
            out.update(self._confidence())
        if self.options.replicates:
            level = self.options.level
            out["intervals"] = {
                k: bootstrap.interval(v, level).as_dict() for k, v in values.items()
            }
        return out

    def _confidence(self) -> dict[str, float]:
        """classifier_confidence's summaries from the running counts."""
        hist = self.counts[2:] / self.total
        nz = hist[hist > 0]
        return {
            "confident_fraction": float(self.counts[0] / self.total),
            "mean_max_prob": float(self.counts[1] / self.total),
            "class_entropy_bits": float(-(nz * np.log2(nz)).sum()),
            "classifier_score": self.scores.whole_set(),
        }
