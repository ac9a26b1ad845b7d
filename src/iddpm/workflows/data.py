"""The data a model needs, with every check, written once (training, bits/dim, sweeps),
and preparing a data set once into the memory-mapped layout (`iddpm prepare-data`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iddpm.config import ExperimentConfig
from iddpm.data.images import ImageDataset
from iddpm.data.prepared import prepare_data
from iddpm.data.spec import load_dataset
from iddpm.workflows.progress import Progress, running_total, silent


def data_for_model(
    cfg: ExperimentConfig,
    spec: str | None = None,
    split: str = "train",
    num_images: int = 0,
    for_training: bool = False,
) -> ImageDataset:
    """Split `split` of the data `spec` (default: the data the model trained on), at the
    model's resolution, checked against the model: channels, and classes for a
    class-conditional model (labels are loaded exactly when the model takes them).
    `num_images` > 0 keeps the first that many. One-line ValueErrors name the flag to fix.
    """
    m = cfg.model
    spec = spec or cfg.train.data
    if not spec:
        raise ValueError(
            "this model records no training data (a converted checkpoint); pass --data SPEC"
        )
    class_cond = cfg.train.class_cond if for_training else m.num_classes is not None
    ds = load_dataset(spec, split, resolution=m.image_size, class_cond=class_cond)
    if ds.channels != m.in_channels:
        fix = f"pass --in-channels {ds.channels}" if for_training else "use data like its own"
        raise ValueError(
            f"data {spec!r} has {ds.channels} channel(s) but the model takes {m.in_channels}; {fix}"
        )
    if class_cond and m.num_classes != ds.num_classes:
        fix = f"pass --num-classes {ds.num_classes}" if for_training else "use its own data"
        raise ValueError(
            f"data {spec!r} has {ds.num_classes} classes but the model has "
            f"num_classes={m.num_classes}; {fix}"
        )
    if len(ds) == 0:
        raise ValueError(f"data {spec!r} ({split} split) holds no images; pass another --data")
    if num_images:
        labels = None if ds.labels is None else ds.labels[:num_images]
        ds = dataclasses.replace(ds, images=ds.images[:num_images], labels=labels)
    return ds


@dataclass(frozen=True)
class PrepareJob:
    """Write the `split` images of data `spec` (+ labels) once, memory-mappable, to `out`."""

    spec: str
    out: Path
    split: str = "train"
    resolution: int | None = None
    class_cond: bool | None = None


def prepare(job: PrepareJob, progress: Progress = silent) -> dict[str, Any]:
    """The `iddpm prepare-data` job (all or nothing; see `data.prepared`)."""
    with progress("prepare-data", None, "img") as bar:
        tick = running_total(bar)  # prepare_data reports (written, total)
        info = prepare_data(job.spec, job.out, job.split, job.resolution, job.class_cond, tick)
    return info.to_dict()
