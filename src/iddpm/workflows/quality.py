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
from iddpm.eval.features import EXTRACTORS, classifier_confidence, get_extractor
from iddpm.eval.fid import FeatureExtractor, FeatureStats, fid_from_stats
from iddpm.eval.precision_recall import precision_recall
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


def score(
    images: np.ndarray, extractor: FeatureExtractor, ref: Reference, batch_size: int = 256
) -> dict[str, Any]:
    """FID of uint8 images [N, H, W, C] against the reference; precision and recall (k = 3)
    when the reference has features and both sets have more than k images; on the digits
    also the classifier's confidence (share of samples with p ≥ 0.9 and friends)."""
    features, stats = image_features(extractor, images, batch_size)
    out: dict[str, Any] = {
        "fid": fid_from_stats(stats, ref.stats),
        "num_samples": int(stats.count),
        "precision": None,
        "recall": None,
    }
    if ref.features is not None and min(len(ref.features), len(features)) > PR_K:
        pr = precision_recall(ref.features, features[:PR_MAX_FEATURES], k=PR_K)
        out.update(precision=pr.precision, recall=pr.recall)
    if hasattr(extractor, "predict_proba"):
        out.update(classifier_confidence(extractor.predict_proba(images)))
    return out


def sample_and_score(
    plan: SamplingPlan,
    extractor: FeatureExtractor,
    ref: Reference,
    save_as: Path | None = None,
) -> dict[str, Any]:
    """Draw the plan's samples, score them, optionally save them (save_as: .npz, with a
    .png grid beside it). Returns the scores and timings (and the images)."""
    samples, seconds = plan.draw_all()
    row: dict[str, Any] = {"sample_seconds": round(seconds, 3)}
    if save_as is not None:
        row.update(write_samples(samples, save_as, save_as.with_suffix(".png")))
    row.update(score(samples.images, extractor, ref, plan.request.batch_size))
    row["images"] = samples.images
    return row
