"""prepare_data: every source form round-trips exactly, .npz batches stream one file at a
time, and every failure is one line that leaves nothing behind."""

from __future__ import annotations

import errno
import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iddpm.data import prepared
from iddpm.data.loader import ImageBatches
from iddpm.data.mapped import FORMAT, META
from iddpm.data.prepared import prepare_data
from iddpm.data.spec import load_dataset


def _rgb(n: int, side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


def _inet_batches(folder: Path, sizes: list[int], side: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Downsampled-ImageNet style files batch_1, batch_2, …: CHW rows, 1-based labels."""
    folder.mkdir()
    xs, ys = [], []
    for i, n in enumerate(sizes, start=1):
        x, y = _rgb(n, side, seed=i), np.random.default_rng(100 + i).integers(1, 11, size=n)
        rows = x.transpose(0, 3, 1, 2).reshape(n, -1)
        np.savez(folder / f"train_data_batch_{i}.npz", data=rows, labels=y, mean=np.zeros(7))
        xs.append(x)
        ys.append(y - 1)
    return np.concatenate(xs), np.concatenate(ys)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _one_line(e: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


# ---------------------------------------------------------------- what is written


def test_digits_round_trip_with_labels_kept_by_default(tmp_path: Path) -> None:
    info = prepare_data("digits", tmp_path / "d")
    ref = load_dataset("digits", class_cond=True)
    ds = load_dataset(str(tmp_path / "d"), class_cond=True)
    assert isinstance(ds.images, np.memmap) and not ds.images.flags.writeable
    assert np.array_equal(ds.images, ref.images) and np.array_equal(ds.labels, ref.labels)
    assert ds.class_names == ref.class_names and ds.num_classes == 10
    assert (info.num_images, info.resolution, info.channels, info.num_classes) == (1442, 8, 1, 10)
    meta = json.loads((tmp_path / "d" / META).read_text())
    assert meta["format"] == FORMAT and meta["shape"] == [1442, 8, 8, 1]
    assert meta["source"] == "digits" and meta["split"] == "train"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary left


def test_labels_can_be_dropped_or_required(tmp_path: Path) -> None:
    info = prepare_data("digits", tmp_path / "nolab", split="test", class_cond=False)
    assert info.num_classes is None and not (tmp_path / "nolab" / "labels.npy").exists()
    assert load_dataset(str(tmp_path / "nolab")).labels is None
    with pytest.raises(ValueError, match=r"needs labels, but prepared:.* prepare it again") as e:
        load_dataset(str(tmp_path / "nolab"), class_cond=True)
    _one_line(e)
    np.savez(tmp_path / "x.npz", images=_rgb(4, 4, 0))
    with pytest.raises(ValueError, match=r"x\.npz has no labels; store them under 'labels'"):
        prepare_data(str(tmp_path / "x.npz"), tmp_path / "out", class_cond=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("form", ["folder", "glob"])
def test_npz_batches_in_natural_order_with_one_based_labels(tmp_path: Path, form: str) -> None:
    sizes = [3, 5, 2, 4, 1, 2, 3, 2, 6, 2, 3]  # batch_1 … batch_11: batch_10 after batch_9
    x, y = _inet_batches(tmp_path / "inet", sizes)
    (tmp_path / "inet" / ".partial.npz").write_bytes(b"hidden: ignored")
    spec = str(tmp_path / "inet") if form == "folder" else str(tmp_path / "inet" / "*_batch_*.npz")
    info = prepare_data(spec, tmp_path / "p")
    ds = load_dataset(str(tmp_path / "p"), class_cond=True)
    assert np.array_equal(ds.images, x) and np.array_equal(ds.labels, y)
    assert info.num_images == sum(sizes) and ds.num_classes == int(y.max()) + 1


def test_npz_batches_are_streamed_one_file_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, _ = _inet_batches(tmp_path / "inet", [4000] * 8, side=16)  # 3 MB of pixels per file
    per_file = x.nbytes / 8
    monkeypatch.setattr(prepared, "_WRITE_ROWS", 400)  # as 4096 rows are to a 1.5 GB file
    tracemalloc.start()
    try:
        prepare_data(str(tmp_path / "inet"), tmp_path / "p")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # one file's rows, a contiguous copy of a tenth of them and numpy's and zipfile's read
    # buffers (~0.5 MB whatever the file size); never two files, let alone all eight
    assert peak < 1.1 * per_file + 1_000_000 < 2 * per_file, (peak, per_file)
    assert np.array_equal(load_dataset(str(tmp_path / "p")).images, x)


def test_a_single_npz_resized_and_mixed_sizes_need_a_resolution(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", _rgb(3, 6, 1))
    np.savez(tmp_path / "b.npz", _rgb(2, 8, 2))
    with pytest.raises(ValueError, match=r"hold 6x6 and 8x8 images; pass a resolution") as e:
        prepare_data(str(tmp_path / "*.npz"), tmp_path / "p")
    _one_line(e)
    prepare_data(str(tmp_path / "*.npz"), tmp_path / "p", resolution=4)
    ds = load_dataset(str(tmp_path / "p"), resolution=4)
    a, b = (
        load_dataset(str(tmp_path / "a.npz"), resolution=4),
        load_dataset(str(tmp_path / "b.npz"), resolution=4),
    )
    assert np.array_equal(ds.images, np.concatenate([a.images, b.images]))


def test_image_folder_is_decoded_in_chunks_equal_to_the_in_memory_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(7):
        cls = "cat" if i % 3 else "dog"
        (tmp_path / "imgs" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rgb(1, 10, i)[0]).save(tmp_path / "imgs" / cls / f"{i}.png")
    monkeypatch.setattr(prepared, "_DECODE_BATCH", 3)  # several chunks
    info = prepare_data(str(tmp_path / "imgs"), tmp_path / "p", resolution=6)
    ref = load_dataset(str(tmp_path / "imgs"), resolution=6, class_cond=True)
    ds = load_dataset(str(tmp_path / "p"), class_cond=True)
    assert np.array_equal(ds.images, ref.images) and np.array_equal(ds.labels, ref.labels)
    assert ds.class_names == ("cat", "dog") and info.num_classes == 2


def test_train_and_test_sub_folders_pick_the_split(tmp_path: Path) -> None:
    for split, value in (("train", 10), ("test", 200)):
        (tmp_path / "d" / split).mkdir(parents=True)
        Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(tmp_path / "d" / split / "a.png")
    prepare_data(str(tmp_path / "d"), tmp_path / "te", split="test")
    assert np.all(load_dataset(str(tmp_path / "te")).images == 200)


# ---------------------------------------------------------------- refusals, nothing left


def _refused(tmp_path: Path, exc: type[Exception], match: str, spec: str, **kw) -> str:
    before = _snapshot(tmp_path)
    with pytest.raises(exc, match=match) as e:
        prepare_data(spec, kw.pop("out", tmp_path / "out"), **kw)
    _one_line(e)
    assert _snapshot(tmp_path) == before
    assert not any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir())
    return str(e.value)


def test_an_existing_output_is_refused_and_untouched(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    _refused(
        tmp_path,
        ValueError,
        "out already exists; choose another output path or delete it",
        "digits",
    )
    (tmp_path / "file").write_text("mine")
    _refused(tmp_path, ValueError, "already exists", "digits", out=tmp_path / "file")


def test_missing_sources_and_output_folder_are_one_line(tmp_path: Path) -> None:
    _refused(
        tmp_path,
        FileNotFoundError,
        "npz file .*nope.npz does not exist",
        str(tmp_path / "nope.npz"),
    )
    _refused(tmp_path, FileNotFoundError, "no files match", str(tmp_path / "none_*.npz"))
    _refused(tmp_path, ValueError, "unknown data spec", str(tmp_path / "nothing"))
    _refused(
        tmp_path,
        FileNotFoundError,
        "folder .*missing does not exist; create it first",
        "digits",
        out=tmp_path / "missing" / "out",
    )


def test_corrupt_sources_leave_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    _inet_batches(tmp_path / "inet", [4, 4, 4])
    last = tmp_path / "inet" / "train_data_batch_3.npz"
    data = bytearray(last.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(16)  # header fine, pixels fail their CRC
    last.write_bytes(bytes(data))
    _refused(tmp_path, ValueError, r"batch_3\.npz is not a readable \.npz", str(tmp_path / "inet"))
    last.write_bytes(bytes(data[: len(data) // 3]))  # truncated: refused from its header
    _refused(tmp_path, ValueError, r"batch_3\.npz is not a readable \.npz", str(tmp_path / "inet"))
    (tmp_path / "imgs").mkdir()
    for i in range(5):
        Image.fromarray(_rgb(1, 4, i)[0]).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "4.png").write_bytes(b"not a png")
    monkeypatch.setattr(prepared, "_DECODE_BATCH", 2)  # fails in the third chunk
    _refused(tmp_path, ValueError, r"cannot decode image .*4\.png", str(tmp_path / "imgs"))
    Image.fromarray(_rgb(1, 6, 0)[0]).save(tmp_path / "imgs" / "4.png")
    _refused(
        tmp_path,
        ValueError,
        r"4\.png is not 4x4 like .*0\.png; pass a resolution",
        str(tmp_path / "imgs"),
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_source_is_one_line(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", images=_rgb(2, 4, 0))
    (tmp_path / "x.npz").chmod(0)
    try:
        _refused(tmp_path, ValueError, r"x\.npz is not a readable \.npz", str(tmp_path / "x.npz"))
    finally:
        (tmp_path / "x.npz").chmod(0o644)


def test_too_little_free_space_is_refused_before_writing(tmp_path: Path, monkeypatch) -> None:
    class Usage:
        free = 1000

    monkeypatch.setattr(prepared.shutil, "disk_usage", lambda path: Usage())
    _refused(tmp_path, ValueError, r"GiB free but the prepared data need .* free space", "digits")


def test_a_write_error_is_one_line_and_removes_the_partial_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(path: Path, plan, progress):
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(prepared, "_write_images", full_disk)
    _refused(
        tmp_path, ValueError, r"cannot write .*out \(No space left on device\); choose", "digits"
    )


def test_a_read_only_file_system_is_named_not_taken_for_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(path: Path, plan, progress):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(prepared, "_write_images", read_only)
    line = _refused(
        tmp_path, ValueError, r"Read-only file system\); choose a folder on a", "digits"
    )
    assert "space" not in line


def test_a_read_only_output_folder_is_refused_before_reading(tmp_path, monkeypatch) -> None:
    flags = os.statvfs(tmp_path)

    class ReadOnly:
        f_flag = flags.f_flag | os.ST_RDONLY

    monkeypatch.setattr(prepared.os, "statvfs", lambda path: ReadOnly())
    monkeypatch.setattr(prepared, "_plan", lambda *a: pytest.fail("read the source first"))
    line = _refused(tmp_path, ValueError, "is on a read-only file system", "digits")
    assert "space" not in line


def test_an_interrupt_mid_write_removes_the_partial_output(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(prepared, "_WRITE_ROWS", 100)  # digits in 15 chunks

    def interrupt(done: int, total: int) -> None:
        if done > 300:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare_data("digits", tmp_path / "out", progress=interrupt)
    assert list(tmp_path.iterdir()) == []


def test_a_stale_temporary_of_a_dead_writer_is_removed(tmp_path: Path) -> None:
    dead = tmp_path / ".out.tmp-999999999"  # beyond pid_max: no such process
    alive = tmp_path / f".out.tmp-{os.getppid()}"  # our parent is running
    for d in (dead, alive):
        d.mkdir()
        (d / "images.npy").write_bytes(b"half")
    prepare_data("digits", tmp_path / "out", split="test")
    assert not dead.exists() and alive.exists()


def test_batches_of_a_prepared_set_equal_the_in_memory_ones_for_two_ranks(tmp_path) -> None:
    prepare_data("digits", tmp_path / "d")
    ref, ds = (
        load_dataset("digits", class_cond=True),
        load_dataset(str(tmp_path / "d"), class_cond=True),
    )
    memory = [ImageBatches(ref.images, ref.labels, 16, 3, r, 2, random_flip=True) for r in (0, 1)]
    disk = [ImageBatches(ds.images, ds.labels, 16, 3, r, 2, random_flip=True) for r in (0, 1)]
    for _ in range(50):  # past the first epoch (45 steps of 32)
        for m, d in zip(memory, disk):
            a, b = next(m), next(d)
            assert torch.equal(a["x0"], b["x0"]) and torch.equal(a["y"], b["y"])
