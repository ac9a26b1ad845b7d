"""The prepared layout's reader: maps without reading, refuses another resolution, and a
damaged folder is one line."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from iddpm.data.loader import ImageBatches
from iddpm.data.mapped import FORMAT, FORMAT_VERSION, IMAGES, LABELS, META, load_prepared
from iddpm.data.spec import load_dataset


def _write(root: Path, images: np.ndarray, labels: np.ndarray | None, k: int | None) -> Path:
    root.mkdir()
    np.save(root / IMAGES, images)
    if labels is not None:
        np.save(root / LABELS, labels)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "shape": list(images.shape),
        "dtype": "uint8",
        "num_classes": k,
        "class_names": None,
        "source": "test.npz",
        "split": "train",
    }
    (root / META).write_text(json.dumps(meta))
    return root


def _sparse(root: Path, shape: tuple[int, ...]) -> Path:
    """A prepared folder whose images.npy is a sparse file: no disk used, reads give zeros."""
    root.mkdir()
    with (root / IMAGES).open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": shape}
        )
        f.truncate(f.tell() + int(np.prod(shape)))
    meta = {"format": FORMAT, "format_version": 1, "shape": list(shape), "num_classes": None}
    (root / META).write_text(json.dumps(meta))
    return root


def test_images_are_a_read_only_map_of_the_file(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(7, 4, 4, 3), dtype=np.uint8)
    root = _write(tmp_path / "p", x, np.arange(7) % 3, 3)
    ds = load_prepared(root)
    assert isinstance(ds.images, np.memmap) and not ds.images.flags.writeable
    assert np.array_equal(ds.images, x) and ds.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert ds.name == f"prepared:{root}" and ds.resolution == 4 and ds.num_classes == 3
    with pytest.raises(ValueError, match="read-only"):
        ds.images[0, 0, 0, 0] = 1


def test_loading_and_batching_a_large_set_copies_only_the_batches(tmp_path: Path) -> None:
    shape = (80_000, 64, 64, 3)  # 983 MB, sparse on disk
    root = _sparse(tmp_path / "big", shape)
    tracemalloc.start()
    try:
        ds = load_dataset(str(root), resolution=64)
        batches = ImageBatches(ds.images, ds.labels, 32, seed=0, random_flip=True)
        xs = [next(batches)["x0"] for _ in range(3)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ds.images.shape == shape and all(x.shape == (32, 3, 64, 64) for x in xs)
    assert all(float(x.max()) == -1.0 for x in xs)  # the zeros of the sparse file
    # numpy's allocations (tracemalloc sees them): the permutation and flip tables
    # (80k × 9 bytes) and uint8 batches, not the 983 MB of pixels
    assert peak < 3_000_000, peak


def test_another_resolution_is_refused_naming_prepare_data(tmp_path: Path) -> None:
    root = _write(tmp_path / "p", np.zeros((2, 8, 8, 3), np.uint8), None, None)
    assert load_dataset(str(root), resolution=8).resolution == 8
    with pytest.raises(ValueError) as e:
        load_dataset(str(root), resolution=32)
    message = str(e.value)
    assert "\n" not in message and "is prepared at 8x8 but 32x32 is asked" in message
    assert "iddpm prepare-data SPEC OUT --resolution 32" in message and "test.npz" in message


def _damage(root: Path, what: str) -> None:
    meta = json.loads((root / META).read_text())
    if what == "json":
        (root / META).write_text("{not json")
    elif what == "format":
        (root / META).write_text(json.dumps({**meta, "format": "other"}))
    elif what == "version":
        (root / META).write_text(json.dumps({**meta, "format_version": 99}))
    elif what == "shape":
        (root / META).write_text(json.dumps({**meta, "shape": [2, 8, 4, 3]}))
    elif what == "mismatch":
        (root / META).write_text(json.dumps({**meta, "shape": [3, 8, 8, 3]}))
    elif what == "truncated":
        data = (root / IMAGES).read_bytes()
        (root / IMAGES).write_bytes(data[: len(data) - 10])
    elif what == "no_images":
        (root / IMAGES).unlink()
    elif what == "no_labels":
        (root / LABELS).unlink()
    elif what == "label_range":
        np.save(root / LABELS, np.array([0, 5]))
    elif what == "class_names":
        (root / META).write_text(json.dumps({**meta, "class_names": ["a"]}))


@pytest.mark.parametrize(
    ("what", "match"),
    [
        ("json", r"meta\.json is unreadable \(JSONDecodeError"),
        ("format", r"meta\.json is not the header of an iddpm prepared dataset"),
        ("version", r"format_version 99 but this iddpm reads version 1"),
        ("shape", r"has shape \[2, 8, 4, 3\], not \[N, R, R, C\]"),
        ("mismatch", r"images\.npy holds uint8 \(2, 8, 8, 3\), not uint8 \(3, 8, 8, 3\)"),
        ("truncated", r"images\.npy is missing, unreadable or truncated"),
        ("no_images", r"images\.npy is missing, unreadable or truncated"),
        ("no_labels", r"labels\.npy is missing, unreadable or truncated"),
        ("label_range", r"labels\.npy holds labels outside \[0, 2\)"),
        ("class_names", r"has class_names \['a'\], not one name per class"),
    ],
)
def test_a_damaged_prepared_folder_is_one_line(tmp_path: Path, what: str, match: str) -> None:
    root = _write(tmp_path / "p", np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]), 2)
    _damage(root, what)
    with pytest.raises(ValueError, match=match) as e:
        load_dataset(str(root), class_cond=True)
    assert "\n" not in str(e.value) and "iddpm prepare-data" in str(e.value)
