"""The prepared, memory-mapped dataset layout and its reader (docs/design.md §6: data at ImageNet
scale is prepared once; a rank's memory holds its batches, not the data set).

A prepared dataset is a directory written once by `prepared.prepare_data`:

    OUT/meta.json    {"format": "iddpm-prepared-images", "format_version": 1,
                      "shape": [N, H, W, C], "dtype": "uint8", "num_classes": K or null,
                      "class_names": [...] or null, "source": SPEC, "split": "train"}
    OUT/images.npy   uint8 [N, H, W, C] in C order, a plain .npy file
    OUT/labels.npy   int64 [N] in [0, K), present exactly when num_classes is not null

`load_prepared` maps images.npy read-only (`np.load(mmap_mode="r")`): nothing is read until
a batch indexes its rows, and fancy indexing copies just those rows. Labels (8 bytes per
image) are read into memory. A prepared dataset is one split at one resolution: asking for
another resolution is refused (prepare it again with `--resolution`), never resampled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from iddpm.data.images import ImageDataset

__all__ = ["FORMAT", "FORMAT_VERSION", "is_prepared", "load_prepared", "read_meta"]

FORMAT = "iddpm-prepared-images"
FORMAT_VERSION = 1
META, IMAGES, LABELS = "meta.json", "images.npy", "labels.npy"
_AGAIN = "prepare the data again with `iddpm prepare-data SPEC OUT`"


def is_prepared(path: str | Path) -> bool:
    """Whether `path` is a directory in the prepared layout (it holds a meta.json)."""
    p = Path(path)
    return p.is_dir() and (p / META).is_file()


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"{path} {what}; {_AGAIN}")


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checked meta.json of a prepared dataset (see the module docstring)."""
    meta_path = Path(path) / META
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _bad(meta_path, f"is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(meta_path, f"is not the header of an iddpm prepared dataset ({FORMAT})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format_version {meta.get('format_version')!r} but this iddpm "
            f"reads version {FORMAT_VERSION}; {_AGAIN}"
        )
    shape, k = meta.get("shape"), meta.get("num_classes")
    ok_shape = (
        isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) for d in shape)
    )
    if not ok_shape or shape[0] < 1 or shape[1] != shape[2] or shape[3] not in (1, 3):
        raise _bad(meta_path, f"has shape {shape!r}, not [N, R, R, C] with C in (1, 3)")
    if k is not None and (not isinstance(k, int) or k < 1):
        raise _bad(meta_path, f"has num_classes {k!r}, not a positive integer or null")
    names = meta.get("class_names")
    if names is not None and (k is None or not isinstance(names, list) or len(names) != k):
        raise _bad(meta_path, f"has class_names {names!r}, not one name per class")
    return meta


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        why = f"is missing, unreadable or truncated ({type(e).__name__}: {first})"
        raise _bad(path, why) from None


def load_prepared(path: str | Path, resolution: int | None = None) -> ImageDataset:
    """The prepared dataset at `path`: images a read-only np.memmap uint8 [N, R, R, C]
    (nothing read yet), labels int64 [N] or None. `resolution` other than None or R is
    refused with a one-line ValueError naming `prepare-data --resolution`."""
    root = Path(path)
    meta = read_meta(root)
    n, h, _, c = meta["shape"]
    if resolution is not None and resolution != h:
        raise ValueError(
            f"{root} is prepared at {h}x{h} but {resolution}x{resolution} is asked; prepare "
            f"{meta.get('source', 'the source')} again with `iddpm prepare-data SPEC OUT "
            f"--resolution {resolution}` or use image size {h}"
        )
    images = _load_npy(root / IMAGES, mmap=True)
    if images.dtype != np.uint8 or images.shape != (n, h, h, c) or not images.flags.c_contiguous:
        raise _bad(root / IMAGES, f"holds {images.dtype} {images.shape}, not uint8 {(n, h, h, c)}")
    labels, k = None, meta.get("num_classes")
    if k is not None:
        labels = _load_npy(root / LABELS, mmap=False)
        if labels.dtype != np.int64 or labels.shape != (n,):
            raise _bad(root / LABELS, f"holds {labels.dtype} {labels.shape}, not int64 [{n}]")
        if not 0 <= labels.min() <= labels.max() < k:
            raise _bad(root / LABELS, f"holds labels outside [0, {k})")
    names = meta.get("class_names")
    return ImageDataset(
        images=images,
        labels=labels,
        num_classes=k,
        name=f"prepared:{root}",
        class_names=tuple(names) if names else None,
    )
