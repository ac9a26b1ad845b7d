"""The `iddpm compare` job: is A better than B, or is the difference noise?

Two kinds of pairs, both with common random numbers, so their difference is much less noisy
than either number:

- two sample sets drawn with the same seed (sample i of A and of B come from the same
  noise): every metric of each against one reference, and for each metric the difference
  A − B with a paired bootstrap interval (the same Poisson weights for sample i of both
  sets, `eval.bootstrap`);
- two per-image bits/dim files of the same images under the same forward-process noise
  (what `iddpm nll` writes as *_per_image.npz): the mean paired difference with a normal
  interval from the per-image differences.

Each difference comes with a plain verdict. Sets of different sizes, seeds or images are
refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats
import torch

from iddpm import distributed
from iddpm._io import write_json
from iddpm.eval.bootstrap import LEVEL, Interval, check_replicates, interval, verdict
from iddpm.eval.scorer import LOWER_IS_BETTER, ScoreOptions
from iddpm.workflows import runtime
from iddpm.workflows.fid import SHARD_SIZE, job_root, reference, remove_job_root, score_images
from iddpm.workflows.image_sets import ImageSet, open_images
from iddpm.workflows.progress import Progress, silent
from iddpm.workflows.quality import extractor_for
from iddpm.workflows.runs import check_output_file, check_outputs_spare_inputs

BOOTSTRAP = 200
PER_IMAGE_KEYS = ("bpd",)


@dataclass(frozen=True)
class CompareJob:
    """A and B: two sample sets (any form `iddpm fid` reads) or two per-image bits/dim
    files; ref: the reference of the sample sets; out: the summary JSON (default:
    A-stem_vs_B-stem.compare.json beside A)."""

    a: str
    b: str
    ref: str | None = None
    ref_split: str = "train"
    features: str = "digits"
    batch_size: int = 256
    bootstrap: int = BOOTSTRAP
    level: float = LEVEL
    out: Path | None = None


def is_per_image_bpd(path: str) -> bool:
    p = Path(path)
    if p.suffix.lower() != ".npz" or not p.is_file():
        return False
    try:
        with np.load(p, allow_pickle=False) as f:
            return all(k in f.files for k in PER_IMAGE_KEYS)
    except Exception:  # an unreadable file is the image reader's to report
        return False


def _default_out(a: str, b: str) -> Path:
    pa, pb = Path(a), Path(b)
    return pa.with_name(f"{pa.stem or pa.name}_vs_{pb.stem or pb.name}.compare.json")


def _check_pair(a: ImageSet, b: ImageSet) -> list[str]:
    if a.total != b.total:
        raise ValueError(
            f"A has {a.total} samples but B has {b.total}; a paired comparison needs sets of "
            "one size drawn with the same seed (use --num and --seed alike)"
        )
    if a.shape != b.shape:
        raise ValueError(f"A's images are {a.shape} but B's {b.shape}; compare like with like")
    if a.seed is not None and b.seed is not None and a.seed != b.seed:
        raise ValueError(
            f"A was sampled with seed {a.seed} and B with seed {b.seed}; draw both with "
            "the same --seed so that sample i shares its noise"
        )
    if a.seed is None or b.seed is None:
        return ["the seeds of A or B are not recorded; the pairing assumes sample i of both "
                "sets was drawn from the same noise"]  # fmt: skip
    return []


def compare_samples(job: CompareJob, device: torch.device | str, progress: Progress) -> dict:
    a, b = open_images(job.a), open_images(job.b)
    notes = _check_pair(a, b)
    if job.ref is None:
        raise ValueError("comparing sample sets needs --ref (a data SPEC or statistics)")
    extractor = extractor_for(job.features, device)
    out = job.out or _default_out(job.a, job.b)
    root, _ = job_root(out, None)
    ref = reference(job.ref, job.ref_split, extractor, job.batch_size, root / "reference",
                    SHARD_SIZE, progress)  # fmt: skip
    options = ScoreOptions(replicates=job.bootstrap, level=job.level)
    values, point = {}, {}
    for name, images in (("A", a), ("B", b)):
        scorer = score_images(images, extractor, job.batch_size, SHARD_SIZE, root / name,
                              options, progress, f"features of {name}")  # fmt: skip
        values[name] = scorer.values(ref.features)
        point[name] = scorer.result(ref.features, values[name])
    distributed.barrier()  # every rank has read the shards before they go
    if runtime.is_main():
        remove_job_root(root, ("reference", "A", "B"))
    metrics = {}
    for metric, lower in LOWER_IS_BETTER.items():
        if metric not in values["A"] or metric not in values["B"]:
            continue
        diff = interval(values["A"][metric] - values["B"][metric], job.level)
        metrics[metric] = {
            "a": point["A"][metric],
            "b": point["B"][metric],
            "a_minus_b": diff.as_dict(),
            "lower_is_better": lower,
            "verdict": verdict(diff, lower),
        }
    return {"kind": "samples", "num_samples": a.total, "features": extractor.name,
            "metrics": metrics, "notes": notes + list(ref.notes)}  # fmt: skip


def _per_image(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def compare_bits(job: CompareJob) -> dict[str, Any]:
    a, b = _per_image(job.a), _per_image(job.b)
    for key in ("seed", "images_sha256"):
        if key in a and key in b and str(a[key]) != str(b[key]):
            raise ValueError(
                f"A and B differ in {key} ({a[key]} vs {b[key]}); compare bounds of the same "
                "images under the same noise (same --data, --split, --num-images, --seed)"
            )
    da, db = np.asarray(a["bpd"], np.float64), np.asarray(b["bpd"], np.float64)
    if da.shape != db.shape or da.ndim != 1 or len(da) < 2:
        raise ValueError(
            f"A holds {da.shape} and B {db.shape} per-image values; compare two files of the "
            "same images (at least 2)"
        )
    d = da - db
    sd = float(d.std(ddof=1) / np.sqrt(len(d)))
    half = float(scipy.stats.norm.ppf(0.5 + job.level / 2)) * sd
    diff = Interval(float(d.mean()), float(d.mean()) - half, float(d.mean()) + half, sd,
                    job.level, len(d))  # fmt: skip
    unpaired = float(np.sqrt(da.var(ddof=1) / len(da) + db.var(ddof=1) / len(db)))
    return {
        "kind": "bits/dim",
        "num_images": len(d),
        "metrics": {
            "bpd": {
                "a": float(da.mean()),
                "b": float(db.mean()),
                "a_minus_b": diff.as_dict(),
                "unpaired_std": unpaired,
                "lower_is_better": True,
                "verdict": verdict(diff, True),
            }
        },
        "notes": [],
    }


def compare(
    job: CompareJob, device: torch.device | str = "cpu", progress: Progress = silent
) -> dict[str, Any]:
    """The `iddpm compare` job; the summary is also written to `job.out`."""
    check_replicates(job.bootstrap)
    if not 0.5 <= job.level < 1:
        raise ValueError(f"--level must be in [0.5, 1), got {job.level}")
    out = job.out or _default_out(job.a, job.b)
    check_output_file(out, "--out")
    check_outputs_spare_inputs(
        {"--out": out}, [Path(p) for p in (job.a, job.b) if Path(p).is_file()]
    )
    bits = [is_per_image_bpd(p) for p in (job.a, job.b)]
    if any(bits) and not all(bits):
        raise ValueError("A and B must both be sample sets or both per-image bits/dim files")
    result = compare_bits(job) if all(bits) else compare_samples(job, device, progress)
    result.update(a=job.a, b=job.b, ref=job.ref, level=job.level)
    if runtime.is_main():
        write_json(out, result)
    return result
