"""Write a dataset once into the memory-mapped layout of `mapped.py` (`iddpm prepare-data`).

Sources (the data SPEC forms of `spec.py`, plus batches of .npz files):

- several `.npz` files: a glob (`batches/train_data_batch_*.npz`) or a folder whose visible
  entries are all .npz files (the downsampled-ImageNet download). They are read one file
  at a time, in natural name order (batch_2 before batch_10), so memory holds one file.
- `FILE.npz`: the same, with one file.
- `DIR` of images: decoded a few hundred at a time straight into the output.
- `digits`, `cifar10:DIR`, a prepared folder: loaded with `spec.load_dataset` (small).

Labels (`class_cond`): True requires them, False drops them, None (the default) keeps them
exactly when the source has them (every .npz file, or every image in a class sub-folder).
With `resolution`, every image is centre-cropped and resized as `images.crop_resize` does;
without it, the source must already be square and of one size.

Safety: every source header is checked and the free space counted before the first write;
the output goes to a hidden sibling `.OUT.tmp-PID` that is renamed to OUT only when complete,
and removed on any failure or interrupt (one killed with SIGKILL is removed by the next
prepare of the same OUT). An existing OUT is never touched.
"""

from __future__ import annotations

import dataclasses
import errno
import glob
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from iddpm._io import fsync_dir
from iddpm.data.images import decode_image, image_folder_files, resize_images
from iddpm.data.mapped import FORMAT, FORMAT_VERSION, IMAGES, LABELS, META, read_meta
from iddpm.data.npz import inspect_npz, read_npz
from iddpm.data.spec import folder_split, is_npz_folder, load_dataset

__all__ = ["PreparedInfo", "prepare_data"]

Chunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray | None]]]
_DECODE_BATCH = 256  # images decoded before one write
_WRITE_ROWS = 4096  # rows made contiguous per write (bounds the copy of a transposed view)
_MARGIN = 16 << 20  # bytes of free space kept beyond the output


@dataclass(frozen=True)
class PreparedInfo:
    """What `prepare_data` wrote: OUT, N images of resolution² × channels, labels or not."""

    path: Path
    num_images: int
    resolution: int
    channels: int
    num_classes: int | None
    source: str
    split: str
    nbytes: int

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "path": str(self.path)}


@dataclass(frozen=True)
class _Plan:
    """Output shape [N, R, R, C], labels or not, and the chunks of (images, labels)."""

    shape: tuple[int, int, int, int]
    labels: bool
    num_classes: int | None  # None with labels: max label + 1, counted while writing
    class_names: tuple[str, ...] | None
    chunks: Chunks


def _natural(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _npz_files(spec: str) -> list[Path] | None:
    """The .npz files a SPEC names (a glob or one file), or None."""
    if glob.has_magic(spec):
        files = sorted((Path(p) for p in glob.glob(spec)), key=_natural)
        if not files:
            raise FileNotFoundError(f"no files match {spec}; check the pattern")
        odd = [str(p) for p in files if not (p.is_file() and p.suffix.lower() == ".npz")]
        if odd:
            raise ValueError(f"{spec} matches {odd[0]}, not a .npz file; narrow the pattern")
        return files
    return [Path(spec)] if spec.lower().endswith(".npz") else None


def _npz_plan(files: list[Path], resolution: int | None, class_cond: bool | None) -> _Plan:
    heads = [inspect_npz(f) for f in files]  # every header is checked before any write
    n = sum(shape[0] for shape, _ in heads)
    channels = {shape[3] for shape, _ in heads}
    sizes = {shape[1:3] for shape, _ in heads}
    if len(channels) > 1:
        raise ValueError(f"the .npz files mix {sorted(channels)} channels; prepare them apart")
    if resolution is None and (len(sizes) > 1 or any(h != w for h, w in sizes)):
        raise ValueError(
            f"the .npz files hold {' and '.join(f'{h}x{w}' for h, w in sorted(sizes))} images; "
            "pass a resolution to centre-crop and resize them to one square size"
        )
    with_labels = [f for f, (_, has) in zip(files, heads) if has]
    if class_cond and len(with_labels) < len(files):
        missing = next(f for f, (_, has) in zip(files, heads) if not has)
        raise ValueError(f"{missing} has no labels; store them under 'labels' or drop classes")
    labels = len(with_labels) == len(files) and class_cond is not False
    side = resolution or heads[0][0][1]

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for f in files:
            images, y = read_npz(f)
            if images.shape[1:3] != (side, side):
                images = resize_images(images, side)
            yield images, (y if labels else None)
            del images, y  # before the next file is read: memory holds one file

    return _Plan((n, side, side, channels.pop()), labels, None, None, chunks)


def _folder_plan(root: Path, resolution: int | None, class_cond: bool | None) -> _Plan:
    files, labels, names = image_folder_files(root, class_cond)
    side = resolution or decode_image(files[0], None).shape[0]

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for a in range(0, len(files), _DECODE_BATCH):
            batch = [decode_image(f, resolution) for f in files[a : a + _DECODE_BATCH]]
            odd = next((f for f, x in zip(files[a:], batch) if x.shape[0] != side), None)
            if odd is not None:
                raise ValueError(
                    f"image {odd} is not {side}x{side} like {files[0]}; pass a resolution "
                    "to resize them all"
                )
            yield np.stack(batch), (None if labels is None else labels[a : a + len(batch)])

    k = len(names) if names else None
    return _Plan((len(files), side, side, 3), labels is not None, k, names, chunks)


def _loaded_plan(spec: str, split: str, resolution: int | None, cc: bool | None) -> _Plan:
    ds = load_dataset(spec, split, resolution, class_cond=cc)

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        for a in range(0, len(ds), _WRITE_ROWS):
            y = None if ds.labels is None else ds.labels[a : a + _WRITE_ROWS]
            yield ds.images[a : a + _WRITE_ROWS], y

    shape = tuple(int(d) for d in ds.images.shape)
    return _Plan(shape, ds.labels is not None, ds.num_classes, ds.class_names, chunks)


def _plan(spec: str, split: str, resolution: int | None, class_cond: bool | None) -> _Plan:
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise ValueError(f"resolution must be a positive integer or None, got {resolution!r}")
    files = _npz_files(spec)
    if files is not None:
        return _npz_plan(files, resolution, class_cond)
    root = Path(spec)
    if spec and root.is_dir() and not (root / META).is_file():
        folder = folder_split(root, split, class_cond)
        if is_npz_folder(folder):  # the downsampled-ImageNet download: batches of .npz
            npz = [f for f in folder.iterdir() if not f.name.startswith(".")]
            return _npz_plan(sorted(npz, key=_natural), resolution, class_cond)
        return _folder_plan(folder, resolution, class_cond)
    return _loaded_plan(spec, split, resolution, class_cond)


# ---- writing ----------------------------------------------------------------------------


def _write_images(path: Path, plan: _Plan, progress: Callable[[int, int], None] | None):
    """Stream the plan's chunks into a .npy file; returns the labels (int64 [N]) or None."""
    n, row = plan.shape[0], int(np.prod(plan.shape[1:]))
    labels = np.empty(n, np.int64) if plan.labels else None
    done = 0
    with path.open("wb") as f:
        header = {"descr": "|u1", "fortran_order": False, "shape": plan.shape}
        np.lib.format.write_array_header_1_0(f, header)
        start = f.tell()
        for images, y in plan.chunks():
            assert images.shape[1:] == plan.shape[1:] and done + len(images) <= n
            for a in range(0, len(images), _WRITE_ROWS):
                f.write(np.ascontiguousarray(images[a : a + _WRITE_ROWS]).data)
            if labels is not None:
                labels[done : done + len(images)] = y
            done += len(images)
            del images, y  # the source may read its next chunk only once this one is gone
            if progress is not None:
                progress(done, n)
        assert done == n and f.tell() == start + n * row, "the source gave fewer images"
        f.flush()
        os.fsync(f.fileno())
    return labels


def _write_all(tmp: Path, plan: _Plan, meta: dict[str, Any], progress: Any) -> dict[str, Any]:
    """images.npy, labels.npy and meta.json into the fresh folder `tmp`; returns the meta."""
    tmp.mkdir()
    labels = _write_images(tmp / IMAGES, plan, progress)
    if labels is not None:
        k = meta["num_classes"] or int(labels.max()) + 1
        if labels.min() < 0 or labels.max() >= k:
            raise ValueError(f"labels of {meta['source']} lie outside [0, {k}); fix the source")
        meta["num_classes"] = k
        with (tmp / LABELS).open("wb") as f:
            np.save(f, labels)
            os.fsync(f.fileno())
    with (tmp / META).open("w") as f:
        f.write(json.dumps(meta, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    return meta


def _writer_alive(suffix: str) -> bool:
    try:
        pid = int(suffix)
    except ValueError:
        return True  # not a name we write: leave it alone
    if pid == os.getpid():
        return False  # an earlier process with our pid; we have not started writing
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _temporary(out: Path) -> Path:
    """The hidden sibling OUT is written under; stale ones of dead writers are removed."""
    for stale in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        if not _writer_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


def _check_out(out: Path) -> None:
    if out.exists() or out.is_symlink():
        raise ValueError(f"{out} already exists; choose another output path or delete it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {out.parent} does not exist; create it first")
    if hasattr(os, "statvfs") and os.statvfs(out.parent).f_flag & os.ST_RDONLY:
        raise ValueError(f"{out.parent} is on a read-only file system; {_WRITE_HINTS[errno.EROFS]}")


# What to do when writing fails, by errno (a read-only file system is not a space problem).
_WRITE_HINTS = {
    errno.EROFS: "choose a folder on a writable file system",
    errno.ENOSPC: "choose another output path or free some space",
    errno.EDQUOT: "choose another output path or free some of your disk quota",
    errno.EACCES: "choose a folder you may write to",
    errno.EPERM: "choose a folder you may write to",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f); raise the limit",
}


def _check_space(out: Path, nbytes: int) -> None:
    free = shutil.disk_usage(out.parent).free
    if free < nbytes + _MARGIN:
        raise ValueError(
            f"{out.parent} has {free / 2**30:.2f} GiB free but the prepared data need "
            f"{(nbytes + _MARGIN) / 2**30:.2f} GiB; free space or choose another output path"
        )


def prepare_data(
    spec: str,
    out: str | Path,
    split: str = "train",
    resolution: int | None = None,
    class_cond: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PreparedInfo:
    """Write the images (and labels) a SPEC names once into the prepared layout at `out`.

    spec: a data SPEC (see `spec.py`) or several .npz files (a glob or a folder of them);
    split: train or test, for sources that have both; resolution: side R to centre-crop and
    resize to (None: keep); class_cond: keep labels (True: required, False: dropped, None:
    when the source has them); progress(done, total) is called after each chunk written.
    Writes OUT/images.npy uint8 [N, R, R, C] (+ labels.npy int64 [N]) and OUT/meta.json
    (`mapped.py`), all or nothing. Errors are one line: an existing `out`, a missing or
    corrupt source, too little free space, an unwritable folder.
    """
    out = Path(out).expanduser()
    _check_out(out)  # before reading anything
    plan = _plan(str(spec), split, resolution, class_cond)
    n, side, _, channels = plan.shape
    nbytes = n * side * side * channels + (8 * n if plan.labels else 0)
    _check_space(out, nbytes)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "shape": list(plan.shape),
        "dtype": "uint8",
        "num_classes": plan.num_classes if plan.labels else None,
        "class_names": list(plan.class_names) if plan.labels and plan.class_names else None,
        "source": str(spec),
        "split": split,
    }
    tmp = _temporary(out)
    try:
        meta = _write_all(tmp, plan, meta, progress)
        _check_out(out)  # nothing may have appeared there while we wrote
        os.rename(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            hint = _WRITE_HINTS.get(e.errno, "choose a writable folder with free space")
            raise ValueError(f"cannot write {out} ({e.strerror or e}); {hint}") from None
        raise
    fsync_dir(out.parent)
    read_meta(out)  # what was written reads back
    return PreparedInfo(out, n, side, channels, meta["num_classes"], str(spec), split, nbytes)
