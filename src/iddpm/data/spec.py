"""Data SPEC strings → `ImageDataset` (docs/design.md §4: the `--data` option).

Accepted forms:

- `digits`: scikit-learn's bundled 8×8 digits, its fixed train/test split (`bundled.py`);
  resolution must be None or 8 (the digits are never resampled).
- `cifar10:DIR`: the official CIFAR-10 python batches (`cifar.py`); train or test.
- `FILE.npz`: uint8 images with optional labels (`images.load_npz`).
- `DIR`: a folder of images (`images.load_image_folder`, RGB). If DIR has both `train/` and
  `test/` sub-folders, the split picks one of them.
- `DIR` written by `iddpm prepare-data` (recognised by its meta.json, `mapped.py`): the
  images stay on disk, memory-mapped read-only; it is one split at the resolution it was
  prepared at (another resolution is refused, not resampled).

Splits of a single file or folder: a `.npz`, a prepared folder, or a folder without both
`train/` and `test/`, is ONE split, returned whole for `split="train"` and for
`split="test"`. iddpm never carves a held-out set out of your data on its own: name the file
or folder holding the images you mean (the dataset's `name` records which one was read).

Labels: the result carries labels exactly when `class_cond` is True (so the CLI passes
`dataset.labels` straight to the batch iterator); asking for classes from a source without
labels is an error. `class_cond=None` keeps labels exactly when the source has them (a
folder: when every image sits in a class sub-folder); `prepare-data` uses it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from iddpm.config import SPLITS
from iddpm.data.bundled import load_digits
from iddpm.data.cifar import load_cifar10
from iddpm.data.images import (
    ImageDataset,
    class_folders,
    load_image_folder,
    load_npz,
    resize_images,
)
from iddpm.data.mapped import is_prepared, load_prepared

FORMS = "digits, cifar10:DIR, FILE.npz, DIR (a folder of images or of prepared data)"


def _digits(split: str, resolution: int | None) -> ImageDataset:
    if resolution not in (None, 8):
        raise ValueError(
            f"the digits are 8x8, got resolution {resolution}; use resolution 8 (or leave it unset)"
        )
    return load_digits(split)


def _cifar(directory: str, split: str, resolution: int | None) -> ImageDataset:
    if not directory:
        raise ValueError("data spec 'cifar10:' names no folder; use cifar10:DIR")
    ds = load_cifar10(directory, split)
    if resolution is None or resolution == ds.resolution:
        return ds
    return dataclasses.replace(ds, images=resize_images(ds.images, resolution))


def is_npz_folder(root: Path) -> bool:
    """Whether root's visible entries are all .npz files (at least one): the layout of the
    downsampled-ImageNet batches (`prepared.prepare_data` streams them)."""
    entries = [e for e in root.iterdir() if not e.name.startswith(".")]
    return bool(entries) and all(e.is_file() and e.suffix.lower() == ".npz" for e in entries)


def folder_split(root: Path, split: str, class_cond: bool | None) -> Path:
    """The folder holding `split`: root/split when root has both train/ and test/ (whose
    class sub-folders must then agree when labels may be read), else root itself."""
    if (root / "train").is_dir() and (root / "test").is_dir():
        if class_cond is not False and class_folders(root / "train") != class_folders(
            root / "test"
        ):
            raise ValueError(
                f"{root}/train and {root}/test have different class sub-folders; give both "
                "the same class folder names so the class indices agree"
            )
        return root / split
    return root


def _folder(
    root: Path, split: str, resolution: int | None, class_cond: bool | None
) -> ImageDataset:
    folder = folder_split(root, split, class_cond)
    if is_npz_folder(folder):
        raise ValueError(
            f"{folder} holds .npz files, not images; prepare them once with `iddpm "
            f"prepare-data {folder} OUT` and pass OUT"
        )
    return load_image_folder(folder, resolution, class_cond=class_cond)


def load_dataset(
    spec: str,
    split: str = "train",
    resolution: int | None = None,
    class_cond: bool | None = False,
) -> ImageDataset:
    """Load the dataset a SPEC names (see the module docstring for the forms and splits).

    Returns uint8 [N, R, R, C] images (a read-only np.memmap for prepared data); labels
    int64 [N] when `class_cond`, None when it is False, the source's own when it is None.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if spec and is_prepared(spec):
        ds = load_prepared(spec, resolution)
    elif spec == "digits":
        ds = _digits(split, resolution)
    elif spec.startswith("cifar10:"):
        ds = _cifar(spec[len("cifar10:") :], split, resolution)
    elif spec.lower().endswith(".npz"):
        ds = load_npz(spec, resolution=resolution)
    elif spec and Path(spec).is_dir():
        ds = _folder(Path(spec), split, resolution, class_cond)
    else:
        raise ValueError(
            f"unknown data spec {spec!r} (not an existing folder either); use one of: {FORMS}"
        )
    if class_cond is None:
        return ds
    if not class_cond:
        return dataclasses.replace(ds, labels=None, num_classes=None, class_names=None)
    if ds.labels is None:
        where = (
            "prepare it again from a source with labels"
            if ds.name.startswith("prepared:")
            else "store labels under 'labels' in the .npz"
        )
        raise ValueError(
            f"class-conditional training needs labels, but {ds.name} has none; {where} "
            "or turn class conditioning off"
        )
    return ds
