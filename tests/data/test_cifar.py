"""CIFAR-10 python batches, exercised with small fake batches written here."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from iddpm.data.cifar import CLASS_NAMES, load_cifar10

PER_BATCH = 3


def _batch(seed: int, n: int = PER_BATCH) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fake batch",
        b"labels": rng.integers(0, 10, size=n).tolist(),  # a list, as in the official files
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }


def write_fake_cifar(root: Path) -> dict[str, list[dict]]:
    root.mkdir(parents=True, exist_ok=True)
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    batches: dict[str, list[dict]] = {}
    for split, files in names.items():
        batches[split] = []
        for name in files:
            b = _batch(seed=len(name) * 100 + sum(name.encode()))
            (root / name).write_bytes(pickle.dumps(b, protocol=2))
            batches[split].append(b)
    return batches


@pytest.mark.parametrize("split", ["train", "test"])
def test_batches_decode_chw_rows_in_file_order(tmp_path: Path, split: str) -> None:
    written = write_fake_cifar(tmp_path)[split]
    ds = load_cifar10(tmp_path, split)
    assert ds.images.shape == (PER_BATCH * len(written), 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.num_classes == 10 and ds.class_names == CLASS_NAMES and ds.labels.dtype == np.int64
    data = np.concatenate([b[b"data"] for b in written])
    labels = [y for b in written for y in b[b"labels"]]
    assert ds.labels.tolist() == labels
    i, h, w, c = 4 % len(data), 5, 17, 2
    assert ds.images[i, h, w, c] == data[i, c * 1024 + h * 32 + w]  # row = [R | G | B], each HxW
    assert np.array_equal(ds.images, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def test_parent_of_the_extracted_folder_is_accepted(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path / "cifar-10-batches-py")
    assert len(load_cifar10(tmp_path, "test")) == PER_BATCH


def test_batches_pickled_by_numpy_1_are_read(tmp_path: Path) -> None:
    # the official files name numpy.core.multiarray, which numpy 2 moved to numpy._core
    write_fake_cifar(tmp_path)
    path = tmp_path / "test_batch"
    old = path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(old)
    assert len(load_cifar10(tmp_path, "test")) == PER_BATCH


def test_missing_files_say_how_to_get_the_official_archive(tmp_path: Path) -> None:
    message = (
        "CIFAR-10 file(s) data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5 "
        f'not found in {tmp_path}; download the official "CIFAR-10 python version"'
    )
    with pytest.raises(FileNotFoundError, match=re.escape(message) + ".*never downloads"):
        load_cifar10(tmp_path, "train")


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_pickles_naming_other_globals_are_refused(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil()}))
    with pytest.raises(ValueError, match=r"is not a CIFAR-10 python batch \(refusing to load"):
        load_cifar10(tmp_path, "test")


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({b"labels": [0]}, r"is not a CIFAR-10 python batch \(b'data'\)"),
        (
            {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]},
            "holds uint8 \\[n, 3072\\]",
        ),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "holds uint8 \\[n, 3072\\]"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "and n labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "labels outside 0..9"),
    ],
)
def test_malformed_batches_are_rejected(tmp_path: Path, batch: dict, message: str) -> None:
    write_fake_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match=message):
        load_cifar10(tmp_path, "test")


def test_truncated_file_and_unknown_split(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(_batch(0))[:50])
    with pytest.raises(ValueError, match="is not a CIFAR-10 python batch"):
        load_cifar10(tmp_path, "test")
    with pytest.raises(ValueError, match="unknown split 'val' for cifar10"):
        load_cifar10(tmp_path, "val")
