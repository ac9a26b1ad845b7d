"""CIFAR-10 from the official "CIFAR-10 python version" batches (docs/design.md §4, `cifar10:DIR`).

iddpm never downloads. Get `cifar-10-python.tar.gz` from
https://www.cs.toronto.edu/~kriz/cifar.html and extract it; DIR may be the extracted
`cifar-10-batches-py` folder or its parent. Each batch is a pickled dict with b"data"
uint8 [10000, 3072] (rows are [3, 32, 32] in CHW order) and b"labels" (10000 ints 0..9).
Training = data_batch_1..5 (50000 images, in file order), test = test_batch (10000).

The pickles are read with an unpickler that only admits the numpy array constructors, so a
tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from iddpm.data.images import ImageDataset

try:  # numpy >= 2 moved the array pickling helper; old pickles name numpy.core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
BATCH_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
SUBDIR = "cifar-10-batches-py"
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes at pickle protocol <= 2 as _codecs.encode(str, "latin1")
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler for plain containers and numpy arrays; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _batch_dir(root: Path) -> Path:
    return root / SUBDIR if (root / SUBDIR).is_dir() else root


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (uint8 [n, 32, 32, 3], int64 [n])."""
    try:
        with path.open("rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path} is not a CIFAR-10 python batch ({e}); re-extract the official "
            "cifar-10-python.tar.gz"
        ) from e
    ok = data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3 * 32 * 32
    if not ok or labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path} has data {data.dtype} {data.shape} and labels {labels.shape}; a CIFAR-10 "
            "batch holds uint8 [n, 3072] and n labels; re-extract the official archive"
        )
    if len(labels) and not 0 <= labels.min() <= labels.max() < len(CLASS_NAMES):
        raise ValueError(f"{path} has labels outside 0..9; re-extract the official archive")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int64)


def load_cifar10(directory: str | Path, split: str = "train") -> ImageDataset:
    """CIFAR-10 `split` ("train": 50000, "test": 10000 in the official files) as uint8
    [N, 32, 32, 3] with int64 labels 0..9 (num_classes 10, in CLASS_NAMES order)."""
    if split not in BATCH_FILES:
        raise ValueError(f"unknown split {split!r} for cifar10; choose one of: train, test")
    root = _batch_dir(Path(directory))
    paths = [root / name for name in BATCH_FILES[split]]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 file(s) {', '.join(missing)} not found in {root}; download the official "
            '"CIFAR-10 python version" (cifar-10-python.tar.gz) from '
            "https://www.cs.toronto.edu/~kriz/cifar.html and extract it there "
            "(iddpm never downloads)"
        )
    parts = [_read_batch(p) for p in paths]
    return ImageDataset(
        images=np.ascontiguousarray(np.concatenate([im for im, _ in parts])),
        labels=np.concatenate([y for _, y in parts]),
        num_classes=len(CLASS_NAMES),
        name=f"cifar10-{split}:{root}",
        class_names=CLASS_NAMES,
    )
