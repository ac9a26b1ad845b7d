"""`.npz` reading: damaged archives give one line, headers give the shape without the pixels."""

from __future__ import annotations

import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from iddpm.data.npz import inspect_npz, read_npz


def _images(n: int = 6, h: int = 8, c: int = 3) -> np.ndarray:
    return np.random.default_rng(n + h + c).integers(0, 256, size=(n, h, h, c), dtype=np.uint8)


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_a_truncated_npz_is_one_line_naming_the_file(
    tmp_path: Path, keep: float, compressed: bool
) -> None:
    path = tmp_path / "cut.npz"
    (np.savez_compressed if compressed else np.savez)(path, images=_images(50))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    for read in (read_npz, inspect_npz):
        with pytest.raises(ValueError) as e:
            read(path)
        assert _one_line(e).startswith(f"{path} is not a readable .npz (")
        assert "write it again with np.savez" in str(e.value)


@pytest.mark.parametrize("compressed", [False, True])
def test_altered_member_bytes_are_one_line(tmp_path: Path, compressed: bool) -> None:
    path = tmp_path / "bad.npz"
    (np.savez_compressed if compressed else np.savez)(path, images=_images(50))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # inside the member's data: CRC or zlib fails
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad\.npz is not a readable \.npz \(") as e:
        read_npz(path)
    _one_line(e)


def test_random_bytes_a_bare_npy_and_a_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "r.npz").write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(ValueError, match=r"r\.npz is not a readable \.npz \(ValueError: not a zip"):
        read_npz(tmp_path / "r.npz")
    with (tmp_path / "one.npz").open("wb") as f:
        np.save(f, _images())
    with pytest.raises(ValueError, match=r"one\.npz holds one \.npy array, not a \.npz archive"):
        read_npz(tmp_path / "one.npz")
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(ValueError, match=r"dir\.npz is a folder, not a \.npz file"):
        inspect_npz(tmp_path / "dir.npz")
    with pytest.raises(FileNotFoundError, match=r"npz file .*gone\.npz does not exist"):
        inspect_npz(tmp_path / "gone.npz")


def test_a_zip_member_that_is_not_an_array_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as z:
        z.writestr("images", b"hello")
    with pytest.raises(ValueError, match=r"z\.npz\['images'\] is not a numpy array"):
        read_npz(tmp_path / "z.npz")


def test_header_shape_equals_the_read_shape_for_every_layout(tmp_path: Path) -> None:
    x = _images(5, 8, 3)
    layouts = {
        "nhwc": {"images": x},
        "grey": {"arr_0": x[..., 0]},
        "inet": {"data": x.transpose(0, 3, 1, 2).reshape(5, -1), "labels": np.arange(1, 6)},
    }
    for name, arrays in layouts.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        images, labels = read_npz(tmp_path / f"{name}.npz")
        assert inspect_npz(tmp_path / f"{name}.npz") == (images.shape, labels is not None)
    images, labels = read_npz(tmp_path / "inet.npz")
    assert np.array_equal(images, x) and labels.tolist() == [0, 1, 2, 3, 4]
    assert not images.flags.c_contiguous  # the CHW rows as a transposed view, not a copy


def test_header_shape_reads_no_pixels(tmp_path: Path) -> None:
    x = np.zeros((2000, 32, 32, 3), np.uint8)  # 6 MB
    np.savez(tmp_path / "big.npz", images=x)
    tracemalloc.start()
    try:
        shape, has_labels = inspect_npz(tmp_path / "big.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert shape == x.shape and not has_labels and peak < x.nbytes / 20


def test_read_npz_reads_only_the_image_and_label_arrays(tmp_path: Path) -> None:
    x = _images(4, 8, 3)
    np.savez(tmp_path / "m.npz", images=x, mean=np.zeros((3000, 1000)))  # 24 MB never read
    tracemalloc.start()
    try:
        images, labels = read_npz(tmp_path / "m.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(images, x) and labels is None and peak < 1_000_000


def test_empty_wrong_dtype_and_wrong_labels_are_refused_from_the_headers_too(
    tmp_path: Path,
) -> None:
    np.savez(tmp_path / "e.npz", images=np.zeros((0, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="holds no images"):
        inspect_npz(tmp_path / "e.npz")
    np.savez(tmp_path / "f.npz", images=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="has dtype float32; iddpm expects uint8"):
        inspect_npz(tmp_path / "f.npz")
    np.savez(tmp_path / "y.npz", images=_images(3), labels=np.zeros(4, int))
    with pytest.raises(ValueError, match=r"y\.npz\['labels'\] has int64 \(4,\); labels must"):
        inspect_npz(tmp_path / "y.npz")
