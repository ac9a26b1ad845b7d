"""The `iddpm fid` job: every sample-quality metric of an image set against a reference,
with a resumable feature pass and optional bootstrap intervals.

Inputs (`image_sets`): SAMPLES is an .npz, a folder of images, a sample job folder, a
prepared data folder or a data SPEC. REF is a data SPEC (its `split` images pass through
the extractor), a statistics .npz (`mu`/`sigma`, or the sums `--save-ref` writes), or a
reference batch as the authors publish for their evaluator: an .npz with images under
`arr_0` and statistics `mu`/`sigma` (and spatial `mu_s`/`sigma_s`). Stored statistics give
FID (and sFID); the images give precision/recall and KID; a file with only statistics
gives FID with a note that the other metrics need images.

The generated set's feature pass is sharded (`shards.ShardedJob`): each shard's features
are stored in the job folder (default SAMPLES-stem.fid.job beside the result, removed once
the result is written; a --job-dir is kept), so a killed job resumes where it stopped and
the metrics, summed shard by shard, are bitwise those of an uninterrupted run, on any
number of ranks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iddpm import __version__, distributed
from iddpm._io import atomic_write, write_json
from iddpm.data.npz import IMAGE_KEYS
from iddpm.eval.bootstrap import check_replicates
from iddpm.eval.fid import FeatureExtractor, FeatureStats
from iddpm.eval.scorer import ReferenceFeatures, SampleScorer, ScoreOptions, extract
from iddpm.shards import MANIFEST, ShardedJob
from iddpm.workflows import runtime
from iddpm.workflows.image_sets import ImageSet, open_images
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.quality import extractor_for
from iddpm.workflows.runs import (
    check_output_file,
    check_outputs_spare_inputs,
    remove_stale_temporaries_of,
)

SHARD_SIZE = 5000
STATS_KEYS = ("mu", "feature_sum")


@dataclass(frozen=True)
class FidJob:
    """Score `samples` against `ref` (module docstring). bootstrap: replicates (0: none);
    shard_size: samples per shard of the feature pass; job_dir: where the shards live;
    out: the summary JSON (default: next to SAMPLES, SAMPLES-stem.fid.json)."""

    samples: str
    ref: str
    ref_split: str = "train"
    features: str = "digits"
    batch_size: int = 256
    save_ref: Path | None = None
    bootstrap: int = 0
    shard_size: int = SHARD_SIZE
    job_dir: Path | None = None
    out: Path | None = None


@dataclass(frozen=True)
class Reference:
    """The reference features, where they came from, and notes on metrics it cannot give."""

    features: ReferenceFeatures
    source: str
    count: int | None
    notes: tuple[str, ...] = ()


def default_output(samples: str) -> Path:
    """SAMPLES.fid.json: beside an .npz or a folder (a data SPEC: in the working folder)."""
    path = Path(samples)
    if path.suffix.lower() == ".npz" or path.exists():
        return path.with_name(f"{path.stem if path.suffix else path.name}.fid.json")
    return Path(f"{samples.replace(':', '_').replace('/', '_')}.fid.json")


# ---- the reference ----------------------------------------------------------------------
def _npz_keys(path: Path) -> list[str] | None:
    if path.suffix.lower() != ".npz" or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return list(f.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(
            f"cannot read {path} as .npz ({e}); pass a file written by np.savez"
        ) from None


def _stored(path: Path, keys: list[str], mu: str, sigma: str, dim: int, what: str):
    stats = FeatureStats.load(path) if mu == "mu" else None
    if stats is None:
        with np.load(path, allow_pickle=False) as f:
            try:
                stats = FeatureStats.from_moments(f[mu], f[sigma])
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
    if stats.dim != dim:
        raise ValueError(
            f"--ref {path} holds {stats.dim}-d {what} statistics but these features are "
            f"{dim}-d; use statistics made with the same --features"
        )
    return stats


def reference(
    ref: str,
    split: str,
    extractor: FeatureExtractor,
    batch_size: int,
    folder: Path,
    shard_size: int = SHARD_SIZE,
    progress: Progress = silent,
) -> Reference:
    """REF as features (module docstring). Reference images go through the same sharded,
    resumable feature pass as the samples (in `folder`), so the statistics are bitwise
    the same on any number of ranks."""
    path = Path(ref)
    keys = _npz_keys(path)
    has_stats = keys is not None and any(k in keys for k in STATS_KEYS)
    has_images = keys is not None and any(k in keys for k in IMAGE_KEYS)
    if keys is not None and not (has_stats or has_images):
        raise ValueError(
            f"--ref {ref} holds neither images (arr_0) nor statistics (mu, sigma), only "
            f"{sorted(keys)}; pass a reference batch, a statistics file or a data SPEC"
        )
    stats = spatial = rows = None
    notes: list[str] = []
    count = None
    if has_stats:
        stats = _stored(path, keys, "mu", "sigma", extractor.dim, "pool")
        if {"mu_s", "sigma_s"} <= set(keys) and getattr(extractor, "spatial_dim", None):
            spatial = _stored(path, keys, "mu_s", "sigma_s", extractor.spatial_dim, "spatial")
        count = stats.count or None
    if has_images or keys is None:
        images = open_images(ref, split)
        extract(extractor, images.read(0, 1))  # images the extractor refuses: before any work
        scorer = score_images(
            images, extractor, batch_size, shard_size, folder, ScoreOptions(), progress,
            "reference features",
        )  # fmt: skip
        stats = stats or scorer.stats()
        spatial = spatial or scorer.spatial_stats()
        rows, count = scorer.rows, count or images.total
    else:
        notes.append(
            f"precision, recall and KID need reference images; --ref {ref} holds statistics "
            "only (a reference batch with images under arr_0 gives them)"
        )
    if spatial is None and getattr(extractor, "spatial_dim", None):
        notes.append(f"sFID needs spatial statistics (mu_s, sigma_s) or images in --ref {ref}")
    return Reference(ReferenceFeatures(stats, spatial, rows), ref, count, tuple(notes))


def save_reference(path: Path, ref: Reference) -> Path:
    """The reference statistics as an .npz: FeatureStats' keys plus mu_s/sigma_s."""
    arrays: dict[str, np.ndarray] = {}
    stats = ref.features.stats
    arrays["extractor"] = np.array(stats.extractor)
    if stats.count:
        arrays.update(
            feature_sum=stats.feature_sum, outer_sum=stats.outer_sum, count=np.array(stats.count)
        )
    arrays.update(mu=stats.mean(), sigma=stats.cov())
    if ref.features.spatial is not None:
        arrays.update(mu_s=ref.features.spatial.mean(), sigma_s=ref.features.spatial.cov())
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


# ---- the generated set: a sharded, resumable feature pass --------------------------------
def fingerprint(images: ImageSet) -> str:
    """What the samples are, for the manifest: the SHA-256 of an .npz file, of a folder's
    (name, size, mtime) list, of a job folder's manifest; a data SPEC's own text."""
    path = Path(images.source)
    h = hashlib.sha256()
    if images.kind == "npz":
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    elif images.kind == "folder":
        for f in sorted(path.rglob("*")):
            if f.is_file():
                st = f.stat()
                h.update(f"{f.relative_to(path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    elif images.kind == "job":
        h.update((path / "manifest.json").read_bytes())
    else:
        h.update(images.source.encode())
    return h.hexdigest()


def _compact(a: np.ndarray) -> np.ndarray:
    """float32 when that loses nothing (network outputs are float32), else as is."""
    a32 = a.astype(np.float32)
    return a32 if np.array_equal(a32.astype(a.dtype), a) else a


def feature_job(
    images: ImageSet, extractor: FeatureExtractor, batch_size: int, shard_size: int, folder: Path
) -> ShardedJob:
    fields = {
        "images": fingerprint(images),
        "extractor": extractor.name,
        "batch_size": batch_size,
        "code_version": __version__,
    }
    return ShardedJob(folder, "fid-features", fields, images.total, shard_size)


def run_feature_pass(
    images: ImageSet,
    extractor: FeatureExtractor,
    shards: ShardedJob,
    batch_size: int,
    progress: Progress = silent,
    desc: str = "sample features",
) -> None:
    """Extract the features of every pending shard (shard k on rank k mod W), each written
    as soon as it is complete; returns when every rank is done."""
    shards.open(runtime.is_main())
    distributed.barrier()
    mine = shards.mine(distributed.rank(), distributed.world_size())
    try:
        with progress(desc, sum(len(shards.range(k)) for k in mine), "img") as bar:
            for k in mine:
                r = shards.range(k)
                parts = []
                for _, batch in images.batches(r.start, r.stop, batch_size):
                    parts.append(extract(extractor, batch))
                    bar.update(len(batch))
                arrays = {"pool": _compact(np.concatenate([p[0] for p in parts]))}
                for name, i in (("spatial", 1), ("logits", 2)):
                    if parts[0][i] is not None:
                        arrays[name] = _compact(np.concatenate([p[i] for p in parts]))
                shards.write(k, arrays)
    except Exception:
        shards.discard_if_unused()
        raise
    distributed.barrier()


def score_shards(
    shards: ShardedJob, extractor: FeatureExtractor, options: ScoreOptions
) -> SampleScorer:
    """Sum the stored features of every shard, in shard order, into a scorer."""
    scorer = SampleScorer(extractor, shards.total, options)
    for k in range(shards.num_shards):
        arrays = shards.read(k)
        if arrays is None:
            raise ValueError(f"shard {k} of {shards.folder} vanished; run the command again")
        f64 = {name: np.asarray(a, np.float64) for name, a in arrays.items()}
        start = shards.range(k).start
        scorer.add_features(f64["pool"], f64.get("spatial"), f64.get("logits"), start)
    return scorer


def score_images(
    images: ImageSet,
    extractor: FeatureExtractor,
    batch_size: int,
    shard_size: int,
    folder: Path,
    options: ScoreOptions,
    progress: Progress = silent,
    desc: str = "sample features",
) -> SampleScorer:
    """The resumable feature pass of an image set (in `folder`), scored."""
    shards = feature_job(images, extractor, batch_size, shard_size, folder)
    run_feature_pass(images, extractor, shards, batch_size, progress, desc)
    return score_shards(shards, extractor, options)


def job_root(out: Path, job_dir: Path | None) -> tuple[Path, bool]:
    """(the job folder, whether to keep it): --job-dir is kept, the default removed."""
    if job_dir is not None:
        return job_dir, True
    return out.with_name(out.name.removesuffix(".json") + ".job"), False


def remove_job_root(root: Path, parts: tuple[str, ...]) -> None:
    """Delete the shard folders `parts` of a job folder, then the folder when empty."""
    for part in parts:
        folder = root / part
        if (folder / MANIFEST).is_file():
            manifest = json.loads((folder / MANIFEST).read_text())
            ShardedJob(folder, manifest["kind"], manifest["fields"], manifest["total"],
                       manifest["shard_size"]).remove()  # fmt: skip
    with contextlib.suppress(OSError):
        root.rmdir()


def fid_of_files(
    job: FidJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """The `iddpm fid` job; the summary is also written to `job.out`."""
    if job.bootstrap:
        check_replicates(job.bootstrap)
    out = job.out or default_output(job.samples)
    root, keep = job_root(out, job.job_dir)
    outputs = {"--out": out} | ({"--save-ref": job.save_ref} if job.save_ref else {})
    for flag, path in outputs.items():
        check_output_file(path, flag)
    inputs = [Path(p) for p in (job.samples, job.ref) if Path(p).is_file()]
    check_outputs_spare_inputs(outputs, inputs)
    images = open_images(job.samples, "train")
    extractor = extractor_for(job.features, device)
    extract(extractor, images.read(0, 1))  # images the extractor refuses: before any work
    feature_job(images, extractor, job.batch_size, job.shard_size, root / "samples").check()
    ref = reference(
        job.ref, job.ref_split, extractor, job.batch_size, root / "reference", job.shard_size,
        progress,
    )  # fmt: skip
    options = ScoreOptions(replicates=job.bootstrap)
    scorer = score_images(
        images, extractor, job.batch_size, job.shard_size, root / "samples", options, progress
    )
    with progress("metrics", None, "task"):
        scores = scorer.result(ref.features)
    result: dict[str, Any] = {
        **scores,
        "features": extractor.name,
        "comparable_to_inception": extractor.comparable_to_inception,
        "num_ref": ref.count,
        "samples": job.samples,
        "ref": job.ref,
    }
    if ref.notes:
        result["notes"] = list(ref.notes)
    distributed.barrier()  # every rank has read the shards before they may go
    if runtime.is_main():
        for path in outputs.values():
            remove_stale_temporaries_of(path)
        if job.save_ref is not None:
            result["saved_ref"] = str(save_reference(job.save_ref, ref))
        write_json(out, result)
        if keep:
            result["job_dir"] = str(root)
        else:
            remove_job_root(root, ("samples", "reference"))
    return result


__all__ = ["SHARD_SIZE", "FidJob", "check_replicates", "fid_of_files", "reference", "score_images"]
