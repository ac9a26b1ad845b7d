"""Reading `.npz` image archives without surprises (docs/design.md §4: the `FILE.npz` data form).

Keys: images under the given key, else the first of arr_0, images, x, data; labels under
the first of arr_1, labels, y. Layouts: uint8 [N, H, W, C] with C in (1, 3), [N, H, W]
grey, and the downsampled-ImageNet rows `data` uint8 [N, 3·H·W] (CHW order, H inferred from
the row length) whose `labels` are 1-based (returned 0-based).

Only the arrays needed are read (an ImageNet batch's `mean` stays on disk), and
`inspect_npz` reads nothing but the .npy headers, so a caller can size its output
before any pixel is loaded. A missing file is a FileNotFoundError; a folder, a bare .npy,
a truncated or corrupt archive, a wrong key, dtype or layout are one-line ValueErrors.
This module knows nothing of datasets (`images.load_npz` builds one).
"""

from __future__ import annotations

import contextlib
import math
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_KEYS", "LABEL_KEYS", "inspect_npz", "read_npz"]

IMAGE_KEYS = ("arr_0", "images", "x", "data")
LABEL_KEYS = ("arr_1", "labels", "y")
_CHANNELS = (1, 3)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a member first, or an empty archive

# What numpy and zipfile raise on a damaged archive: BadZipFile for a truncated one (its
# directory is at the end), EOFError / ValueError / zlib.error for cut or altered members.
_NPZ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError)


def _not_readable(path: Path, e: BaseException) -> ValueError:
    why = (str(e).strip().splitlines() or [""])[0][:160]
    return ValueError(
        f"{path} is not a readable .npz ({type(e).__name__}: {why}); write it again with "
        "np.savez or download it again"
    )


def _npz_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a .npz file; pass the file itself")
    if not path.is_file():
        raise FileNotFoundError(f"npz file {path} does not exist; pass an existing .npz file")
    return path


@contextlib.contextmanager
def _open_npz(path: Path) -> Iterator[np.lib.npyio.NpzFile]:
    try:
        with path.open("rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise _not_readable(path, e) from None
    if magic == b"\x93NUMPY":
        raise ValueError(
            f"{path} holds one .npy array, not a .npz archive; save it with "
            "np.savez(FILE, images=x)"
        )
    if magic[:4] not in _ZIP_MAGIC:
        raise _not_readable(path, ValueError("not a zip archive"))
    try:
        archive = np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as e:
        raise _not_readable(path, e) from None
    with archive:
        yield archive


def _member(f: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:
        x = f[key]
    except _NPZ_ERRORS as e:
        raise _not_readable(path, e) from None
    if not isinstance(x, np.ndarray):  # a zip member that is not a .npy comes back as bytes
        raise ValueError(f"{path}[{key!r}] is not a numpy array; write the file with np.savez")
    return x


_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _member_header(f: np.lib.npyio.NpzFile, key: str, path: Path) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of one member from its .npy header; the data are not read."""
    name = f"{key}.npy"
    try:
        with f.zip.open(name) as member:
            read = _HEADER_READERS.get(np.lib.format.read_magic(member))
            if read is not None:
                shape, _, dtype = read(member)
                return tuple(shape), np.dtype(dtype)
    except (*_NPZ_ERRORS, KeyError) as e:
        raise _not_readable(path, e) from None
    x = _member(f, key, path)  # a header version without a public reader: read it all
    return x.shape, x.dtype


def _image_key(files: list[str], key: str | None, path: Path) -> str:
    if key is None:
        key = next((k for k in IMAGE_KEYS if k in files), None)
    if key not in files:
        raise ValueError(
            f"{path} has no image array {key or ''} (keys: {', '.join(files) or 'none'}); "
            f"store uint8 images under one of: {', '.join(IMAGE_KEYS)}"
        )
    return key


def _nhwc_shape(shape: tuple, dtype: np.dtype, key: str, path: Path) -> tuple[int, ...]:
    """[N, H, W, C] of the images a member of this shape and dtype holds (checked)."""
    if dtype != np.uint8:
        raise ValueError(
            f"{path}[{key!r}] has dtype {dtype}; iddpm expects uint8 pixels in [0, 255] "
            "(convert with np.round(x * 255).astype(np.uint8) for floats in [0, 1])"
        )
    if key == "data" and len(shape) == 2:
        # downsampled-ImageNet layout: rows are flattened [3, H, W] (CHW) images
        side = math.isqrt(shape[1] // 3)
        if 3 * side * side != shape[1]:
            raise ValueError(
                f"{path}['data'] rows have {shape[1]} values, not 3*H*H; expected the "
                "downsampled-ImageNet layout [N, 3*H*W]"
            )
        return (shape[0], side, side, 3)
    if len(shape) == 3:
        shape = (*shape, 1)  # [N, H, W] grey
    if len(shape) != 4 or shape[-1] not in _CHANNELS:
        raise ValueError(
            f"{path}[{key!r}] has shape {tuple(shape)}; expected uint8 [N, H, W, C] with C in "
            "(1, 3) (channels last: transpose NCHW arrays with x.transpose(0, 2, 3, 1))"
        )
    return tuple(int(d) for d in shape)


def _labels_from_npz(y: np.ndarray, key: str, n: int, one_based: bool, path: Path) -> np.ndarray:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{path}[{key!r}] has {y.dtype} {y.shape}; labels must be integers of shape [{n}]"
        )
    y = y.astype(np.int64) - (1 if one_based else 0)
    if n and y.min() < 0:
        base = "1-based (downsampled-ImageNet layout)" if one_based else "0-based"
        raise ValueError(f"{path}[{key!r}] has labels below the first class; they must be {base}")
    return y


def inspect_npz(path: str | Path, key: str | None = None) -> tuple[tuple[int, ...], bool]:
    """((N, H, W, C) of the images `read_npz` would return, whether it holds labels), from
    the array headers alone (no pixel is read), with the same checks of key, dtype, layout
    and label shape."""
    path = _npz_path(path)
    with _open_npz(path) as f:
        key = _image_key(f.files, key, path)
        shape, dtype = _member_header(f, key, path)
        label_key = next((k for k in LABEL_KEYS if k in f.files), None)
        label_header = None if label_key is None else _member_header(f, label_key, path)
    nhwc = _nhwc_shape(shape, dtype, key, path)
    if nhwc[0] == 0:
        raise ValueError(f"{path}[{key!r}] holds no images; pass a file with at least one")
    if label_header is not None:
        y_shape, y_dtype = label_header
        if y_shape != (nhwc[0],) or not np.issubdtype(y_dtype, np.integer):
            raise ValueError(
                f"{path}[{label_key!r}] has {y_dtype} {y_shape}; labels must be integers of "
                f"shape [{nhwc[0]}]"
            )
    return nhwc, label_key is not None


def read_npz(path: str | Path, key: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """The images and labels of a `.npz` as stored (see `load_npz` for keys and layouts):
    uint8 [N, H, W, C] (for the downsampled-ImageNet layout a transposed view of the rows,
    not a copy) and int64 [N] 0-based labels or None. Only the two arrays are read."""
    path = _npz_path(path)
    with _open_npz(path) as f:
        key = _image_key(f.files, key, path)
        label_key = next((k for k in LABEL_KEYS if k in f.files), None)
        raw = _member(f, key, path)
        n, h, w, c = _nhwc_shape(raw.shape, raw.dtype, key, path)
        y = None if label_key is None else _member(f, label_key, path)
    imagenet = key == "data" and raw.ndim == 2
    images = raw.reshape(n, c, h, w).transpose(0, 2, 3, 1) if imagenet else raw.reshape(n, h, w, c)
    if n == 0:
        raise ValueError(f"{path}[{key!r}] holds no images; pass a file with at least one")
    labels = None if y is None else _labels_from_npz(y, label_key, n, imagenet, path)
    return images, labels
