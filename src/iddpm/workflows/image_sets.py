"""The image sets users score, read batch by batch: an .npz, a folder of images, a sample
job folder, a prepared data folder or any data SPEC.

`open_images(text)` checks the whole set before any work (the folder's sizes from the
image headers, the .npz's from its .npy header, a job folder's completeness) and returns an
`ImageSet` whose `read(lo, hi)` gives the uint8 rows lo..hi−1. Nothing but the batch being
read is held for an .npz stored as uint8 [N, H, W, C] (or [N, H, W]): its rows are read
straight from the archive member; other layouts (and compressed archives) are loaded
whole.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from iddpm.data.images import decode_image, image_folder_files
from iddpm.data.mapped import is_prepared
from iddpm.data.npz import IMAGE_KEYS, LABEL_KEYS, inspect_npz, read_npz
from iddpm.data.spec import load_dataset
from iddpm.shards import MANIFEST, ShardedJob


@dataclass(frozen=True)
class ImageSet:
    """`total` uint8 images of shape (H, W, C) from `source`; `read(lo, hi)` → [hi−lo, H,
    W, C]. `seed`: the sampling seed when the set says so (a job folder, or the JSON that
    `iddpm sample` writes beside its .npz), else None."""

    source: str
    kind: str
    total: int
    shape: tuple[int, int, int]
    read: Callable[[int, int], np.ndarray]
    seed: int | None = None
    labels: np.ndarray | None = None  # int64 [total] class labels, when the set has them

    def batches(self, lo: int, hi: int, batch_size: int):
        """(start, images) of rows lo..hi−1 in batches."""
        for start in range(lo, hi, batch_size):
            yield start, self.read(start, min(start + batch_size, hi))


def open_images(text: str, split: str = "train") -> ImageSet:
    """SAMPLES of `iddpm fid`/`compare` (module docstring)."""
    path = Path(text)
    if path.is_dir() and (path / MANIFEST).is_file():
        return _job_folder(path)
    if path.is_dir() and not is_prepared(path):
        return _image_folder(path)
    if path.suffix.lower() == ".npz" and not path.is_dir():
        return _npz(path)
    ds = load_dataset(text, split, class_cond=None)
    return _in_memory(text, "data", ds.images, None, ds.labels)


def _in_memory(
    source: str, kind: str, images: np.ndarray, seed: int | None = None, labels=None
) -> ImageSet:
    def read(lo: int, hi: int) -> np.ndarray:
        return np.asarray(images[lo:hi])

    return ImageSet(source, kind, len(images), tuple(images.shape[1:]), read, seed, labels)


def _sidecar_seed(path: Path) -> int | None:
    """The seed `iddpm sample` recorded in OUT.json beside OUT.npz, if any."""
    try:
        seed = json.loads(path.with_suffix(".json").read_text()).get("seed")
    except (OSError, ValueError, AttributeError):
        return None
    return seed if isinstance(seed, int) else None


def _npz(path: Path) -> ImageSet:
    (n, h, w, c), _ = inspect_npz(path)
    if n == 0:
        raise ValueError(f"{path} holds no images; pass a file with at least one")
    seed = _sidecar_seed(path)
    streamed = _npz_rows(path, (n, h, w, c))
    if streamed is None:
        images, labels = read_npz(path)
        return _in_memory(str(path), "npz", images, seed, labels)
    return ImageSet(str(path), "npz", n, (h, w, c), streamed, seed, _npz_labels(path, n))


def _npz_labels(path: Path, n: int) -> np.ndarray | None:
    """int64 [n] labels under arr_1 / labels / y (only that member is read), or None."""
    with np.load(path, allow_pickle=False) as f:
        key = next((k for k in LABEL_KEYS if k in f.files), None)
        if key is None:
            return None
        y = f[key]
    if y.shape != (n,) or y.dtype.kind not in "iu":
        raise ValueError(f"{path}[{key!r}] is not one integer label per image; store [N] ints")
    return y.astype(np.int64)


def _npz_rows(path: Path, shape: tuple[int, int, int, int]):
    """A reader of rows straight from the archive when the images are a C-order uint8
    member (arr_0 / images / ...) of shape [N, H, W(, C)]; None for other layouts."""
    n, h, w, c = shape
    with np.load(path, allow_pickle=False) as f:
        key = next((k for k in IMAGE_KEYS if k in f.files), None)
    if key is None:
        return None
    name = f"{key}.npy"
    with zipfile.ZipFile(path) as z:
        if z.getinfo(name).compress_type != zipfile.ZIP_STORED:
            return None  # np.savez_compressed: seeking would decompress from the start
    with zipfile.ZipFile(path) as z, z.open(name) as m:
        version = np.lib.format.read_magic(m)
        if version != (1, 0):
            return None
        mshape, fortran, dtype = np.lib.format.read_array_header_1_0(m)
        offset = m.tell()
    if fortran or dtype != np.uint8 or tuple(mshape) not in ((n, h, w, c), (n, h, w)):
        return None
    row = h * w * c

    def read(lo: int, hi: int) -> np.ndarray:
        with zipfile.ZipFile(path) as z, z.open(name) as m:
            m.seek(offset + lo * row)
            data = m.read((hi - lo) * row)
        if len(data) != (hi - lo) * row:
            raise ValueError(f"{path} ends early (truncated); write it again with np.savez")
        return np.frombuffer(data, np.uint8).reshape(hi - lo, h, w, c).copy()

    return read


def _image_folder(root: Path) -> ImageSet:
    files, _, _ = image_folder_files(root, class_cond=False)
    sizes, modes = set(), set()
    for f in files:  # headers only: sizes and modes before any decoding
        try:
            with Image.open(f) as img:
                sizes.add(img.size)
                modes.add(img.mode)
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            raise ValueError(f"cannot decode image {f} ({e}); delete or replace the file") from e
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
        raise ValueError(
            f"images under {root} have different sizes ({shown}); scoring needs one size; "
            "make them all one size first"
        )
    ((w, h),) = sizes
    channels = 1 if modes <= {"L", "1", "I;16", "I;16B", "I;16L", "I", "F"} else 3

    def read(lo: int, hi: int) -> np.ndarray:
        return np.stack([_decode(f, w == h, channels) for f in files[lo:hi]])

    return ImageSet(str(root), "folder", len(files), (h, w, channels), read)


def _decode(path: Path, square: bool, channels: int) -> np.ndarray:
    """One image as uint8 [H, W, channels], size kept (16-bit grey scaled to 8 bits)."""
    if square:
        return decode_image(path, None, channels)
    with Image.open(path) as img:
        rgb = img.convert("L" if channels == 1 else "RGB")
        return np.asarray(rgb, dtype=np.uint8).reshape(img.size[1], img.size[0], channels)


def _job_folder(folder: Path) -> ImageSet:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        kind, total, size = manifest["kind"], manifest["total"], manifest["shard_size"]
        fields = manifest.get("fields") or {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{folder / MANIFEST} is not a readable job manifest ({type(e).__name__}); pass "
            "the job folder of an `iddpm sample` run"
        ) from None
    if kind != "sample":
        raise ValueError(f"{folder} is a {kind!r} job folder; pass the job folder of a sample run")
    job = ShardedJob(folder, kind, fields, total, size)
    missing = job.pending()
    if missing:
        raise ValueError(
            f"job folder {folder} is incomplete ({len(missing)} of {job.num_shards} shards "
            "missing or damaged); run its `iddpm sample` command again to finish it"
        )
    first = job.read(0)["images"]

    def read(lo: int, hi: int) -> np.ndarray:
        parts = []
        for k in range(lo // size, -(-hi // size)):
            r = job.range(k)
            images = job.read(k)["images"]
            parts.append(images[max(lo, r.start) - r.start : min(hi, r.stop) - r.start])
        return np.concatenate(parts)

    seed = fields.get("seed")
    shards = [job.read(k) for k in range(job.num_shards)] if "labels" in job.read(0) else None
    labels = None if shards is None else np.concatenate([a["labels"] for a in shards])
    return ImageSet(str(folder), "job", total, tuple(first.shape[1:]), read,
                    seed if isinstance(seed, int) else None, labels)  # fmt: skip


def in_memory_set(source: str, samples) -> ImageSet:
    """An ImageSet over samples in memory (`generate.Samples`: images and labels)."""
    return _in_memory(source, "npz", samples.images, None, samples.labels)
