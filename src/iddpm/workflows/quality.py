"""Sample quality against a reference, written once: reference features and statistics,
scoring a set of images (FID, improved precision and recall with k = 3, classifier
confidence on the digits), the `iddpm fid` job, and "sample with sampler S at K steps and
score it" for sweeps and the demo.

Features are computed once per image set, sharded across ranks and gathered; the FID
statistics are summed from them, and precision/recall use them directly (on at most
PR_MAX_FEATURES of each set: the metric's cost grows with the square of the set size).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iddpm import distributed
from iddpm.data.spec import load_dataset
from iddpm.eval.bootstrap import interval
from iddpm.eval.features import EXTRACTORS, get_extractor
from iddpm.eval.fid import FeatureExtractor, FeatureStats
from iddpm.eval.scorer import ReferenceFeatures, SampleScorer, ScoreOptions
from iddpm.workflows.guidance import requested_class_accuracy
from iddpm.workflows.plan import SamplingPlan
from iddpm.workflows.sample import write_samples

FEATURES = EXTRACTORS  # what --features offers
PR_K = 3  # neighbours of the improved precision/recall (Kynkäänniemi et al. 2019)
PR_MAX_FEATURES = 10_000


@dataclass(frozen=True)
class Reference:
    """Feature statistics of the reference set, its features when it came from images
    (None for a stats .npz: no precision/recall then), and where it came from."""

    stats: FeatureStats
    source: str
    features: np.ndarray | None = None


def image_features(
    extractor: FeatureExtractor, images: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, FeatureStats]:
    """Features [N, D] of uint8 images [N, H, W, C] (each rank extracts its contiguous
    block, then they are gathered in order) and their FID statistics."""
    mine = distributed.rank_block(len(images), distributed.rank(), distributed.world_size())
    parts = [
        np.asarray(extractor(images[lo : min(lo + batch_size, mine.stop)]), np.float64)
        for lo in range(mine.start, mine.stop, batch_size)
    ]
    local = np.concatenate(parts) if parts else np.zeros((0, extractor.dim))
    stats = FeatureStats(dim=extractor.dim, extractor=extractor.name)
    if len(local):
        stats.add(local)
    stats = stats.all_reduce()
    if distributed.world_size() == 1:
        return local, stats
    flat = torch.from_numpy(np.ascontiguousarray(local).reshape(-1)).to(distributed.device())
    gathered = distributed.all_gather_1d(flat).cpu().numpy().reshape(-1, extractor.dim)
    return gathered, stats


def extractor_for(features: str, device: torch.device | str) -> FeatureExtractor:
    """The feature extractor by name: "digits" (offline, bundled) or "inception"."""
    return get_extractor(features, device=device)


def is_stats_file(ref: str) -> bool:
    """True when `ref` names an .npz of feature statistics (not of images)."""
    path = Path(ref)
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as f:
            return "mu" in f.files or "feature_sum" in f.files
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"cannot read {path} as .npz ({e}); pass a file written by np.savez"
        ) from None


def reference(
    ref: str, split: str, extractor: FeatureExtractor, batch_size: int = 256
) -> Reference:
    """--ref: a stats .npz (mu/sigma or iddpm's sums), or a data SPEC whose `split` images
    are passed through the extractor (sharded across ranks)."""
    if is_stats_file(ref):
        stats = FeatureStats.load(ref)
        if stats.dim != extractor.dim:
            raise ValueError(
                f"--ref {ref} holds {stats.dim}-d statistics but the {extractor.name} "
                f"features are {extractor.dim}-d; use statistics of the same --features"
            )
        return Reference(stats, ref)
    images = load_dataset(ref, split).images
    features, stats = image_features(extractor, images, batch_size)
    return Reference(stats, ref, features[:PR_MAX_FEATURES])


BOOTSTRAP = 100  # replicates behind the intervals of sweeps and the demo's leaderboard
KID_SUBSETS = 10  # KID's subsets in sweeps (a row stays fast; `iddpm fid` uses 100)


def score(
    images: np.ndarray,
    extractor: FeatureExtractor,
    ref: Reference,
    batch_size: int = 256,
    labels: np.ndarray | None = None,
    replicates: int = 0,
) -> dict[str, Any]:
    """Every metric of uint8 images [N, H, W, C] against the reference (`eval.scorer`:
    FID, Inception Score, KID and precision/recall (k = 3) when the reference has features,
    the classifier's confidence on the digits) with `replicates` Poisson-bootstrap
    replicates: `fid_low`/`fid_high` bound a 95% interval, and the private key
    "_replicates" holds each metric's replicates (index 0 the estimate) for paired
    comparisons between rows drawn with the same seed. For samples asked for classes
    `labels` [N], a classifier extractor also gives the share it labels as asked
    ("class_accuracy")."""
    options = ScoreOptions(replicates=replicates, kid_subsets=KID_SUBSETS)
    scorer = SampleScorer(extractor, len(images), options)
    for lo in range(0, len(images), batch_size):
        scorer.add(images[lo : lo + batch_size], lo)
    features = ReferenceFeatures(ref.stats, None, ref.features)
    values = scorer.values(features)
    out = scorer.result(features, values)
    out.pop("sfid", None)  # no spatial reference statistics here
    intervals = out.pop("intervals", {})
    for name in ("fid", "inception_score"):
        if name in intervals:
            out[f"{name}_low"] = intervals[name]["low"]
            out[f"{name}_high"] = intervals[name]["high"]
    out["_replicates"] = values
    if labels is not None and hasattr(extractor, "predict_proba"):
        out["class_accuracy"] = requested_class_accuracy(extractor.predict_proba(images), labels)
    return out


def mark_ties(rows: list[dict[str, Any]], metric: str = "fid", level: float = 0.95) -> None:
    """Mark, in place, each row whose `metric` is not significantly worse than the best
    row's (paired bootstrap of the difference: the rows were drawn with one seed):
    row["fid_vs_best"] = "best", "tie" (interval of the difference contains 0) or "worse".
    Rows without replicates are left alone; the private "_replicates" are removed."""
    scored = [r for r in rows if "_replicates" in r and metric in r["_replicates"]]
    if scored:
        best = min(scored, key=lambda r: r[metric])
        ref = best["_replicates"][metric]
        for r in scored:
            if r is best:
                r[f"{metric}_vs_best"] = "best"
                continue
            diff = interval(r["_replicates"][metric] - ref, level)
            r[f"{metric}_vs_best"] = "tie" if diff.low <= 0.0 else "worse"
    for r in rows:
        r.pop("_replicates", None)


def sample_and_score(
    plan: SamplingPlan,
    extractor: FeatureExtractor,
    ref: Reference,
    save_as: Path | None = None,
    replicates: int = 0,
) -> dict[str, Any]:
    """Draw the plan's samples, score them (`score`), optionally save them (save_as: .npz,
    with a .png grid beside it). Returns the scores and timings (and the images)."""
    samples, seconds = plan.draw_all()
    row: dict[str, Any] = {"sample_seconds": round(seconds, 3), **plan.cost()}
    if save_as is not None:
        row.update(write_samples(samples, save_as, save_as.with_suffix(".png")))
    row.update(
        score(
            samples.images,
            extractor,
            ref,
            plan.request.batch_size,
            labels=samples.labels,
            replicates=replicates,
        )
    )
    row["images"] = samples.images
    return row
