"""The bundled default dataset: scikit-learn's 8×8 handwritten digits (docs/design.md §2).

The data ships inside the scikit-learn wheel (`sklearn.datasets.load_digits`), so nothing is
downloaded. 1797 grey images at their native 8×8 size, classes 0..9.

Grey levels: the 17 levels v ∈ {0, …, 16} become uint8 round(v·255/16) (0 → 0, 8 → 128,
16 → 255; the only tie, 127.5, rounds up), so the full [−1, 1] range is used.

Split (fixed forever; tests pin it): within each class, in scikit-learn's order, every
fifth image (the 5th, 10th, … of that class) is a test image. That is a stratified 20%
(rounded down per class) with no random generator to drift across library versions:
355 test images, 1442 training images.
"""

from __future__ import annotations

import numpy as np

from iddpm.config import SPLITS
from iddpm.data.images import ImageDataset

NUM_DIGITS = 1797
TEST_EVERY = 5


def digit_levels_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map digits grey levels 0..16 (any numeric dtype) to uint8 round(v·255/16), ties up."""
    return np.floor(np.asarray(values, np.float64) * 255.0 / 16.0 + 0.5).astype(np.uint8)


def is_test_image(labels: np.ndarray) -> np.ndarray:
    """bool [N]: True for every TEST_EVERY-th image of each class, counted in data order."""
    rank_in_class = np.zeros(len(labels), np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank_in_class[where] = np.arange(len(where))
    return rank_in_class % TEST_EVERY == TEST_EVERY - 1


def load_digits(split: str = "train") -> ImageDataset:
    """The digits split as uint8 [N, 8, 8, 1] with int64 labels 0..9 (num_classes 10)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} for digits; choose one of: {', '.join(SPLITS)}")
    from sklearn.datasets import load_digits as sklearn_digits  # imported lazily: ~0.5 s

    bunch = sklearn_digits()
    images = digit_levels_to_uint8(bunch.images).reshape(-1, 8, 8, 1)
    labels = np.asarray(bunch.target, np.int64)
    assert len(images) == NUM_DIGITS, "scikit-learn's digits changed size"
    keep = is_test_image(labels) == (split == "test")
    return ImageDataset(
        images=np.ascontiguousarray(images[keep]),
        labels=labels[keep],
        num_classes=10,
        name=f"digits-{split}",
        class_names=tuple(str(d) for d in range(10)),
    )
