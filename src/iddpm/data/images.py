"""Image datasets held as uint8, from a folder of image files or a `.npz` (DESIGN.md §2).

Images stay uint8 [N, H, W, C] (C = 1 for grey, 3 for RGB) until a batch is drawn; only then
`to_model_range` maps them to float32 [N, C, H, W] in [−1, 1] with x/127.5 − 1 (PAPER.md),
so the discretised decoder sees exact bin centres. `to_uint8` is its rounding inverse.

Resizing: each image is centre-cropped to a square (side = its short side, offsets floored)
and then resized with ONE Pillow BICUBIC resize. Pillow widens the bicubic kernel by the
downscale factor, so a large downscale is already antialiased; no box pre-pass is needed.
No torchvision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from iddpm._tensor import to_model_range, to_uint8

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "class_folders",
    "crop_resize",
    "load_image_folder",
    "load_npz",
    "resize_images",
    "to_model_range",
    "to_uint8",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_IMAGE_KEYS = ("arr_0", "images", "x", "data")
_LABEL_KEYS = ("arr_1", "labels", "y")
_MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class ImageDataset:
    """A labelled or unlabelled set of uint8 images.

    images: uint8 [N, H, W, C], C ∈ {1, 3}; labels: int64 [N] in [0, num_classes) or None;
    class_names: one name per class index when known (folder names, CIFAR-10 classes).
    """

    images: np.ndarray
    labels: np.ndarray | None
    num_classes: int | None
    name: str
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        x = self.images
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] not in _MODES:
            raise ValueError(
                f"dataset {self.name!r}: images must be uint8 [N, H, W, C] with C in (1, 3), "
                f"got {x.dtype} {x.shape}"
            )
        if self.labels is None:
            return
        y = self.labels
        if y.dtype != np.int64 or y.shape != (len(x),):
            raise ValueError(
                f"dataset {self.name!r}: labels must be int64 [{len(x)}], got {y.dtype} {y.shape}"
            )
        if self.num_classes is None or (len(y) and not 0 <= y.min() <= y.max() < self.num_classes):
            raise ValueError(
                f"dataset {self.name!r}: labels must lie in [0, num_classes={self.num_classes})"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def resolution(self) -> int:
        """Side in pixels (H; every loader here makes images square)."""
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[3])


def crop_resize(img: Image.Image, resolution: int) -> Image.Image:
    """Centre-crop a PIL image to a square, then BICUBIC-resize it to resolution²."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.BICUBIC)
    return img


def resize_images(images: np.ndarray, resolution: int) -> np.ndarray:
    """`crop_resize` every image of a uint8 [N, H, W, C] array (a no-op if already square at
    `resolution`). Returns uint8 [N, resolution, resolution, C]."""
    n, h, w, c = images.shape
    if h == w == resolution:
        return images
    out = np.empty((n, resolution, resolution, c), np.uint8)
    for i, im in enumerate(images):
        pil = Image.fromarray(im[..., 0] if c == 1 else im, _MODES[c])
        out[i] = np.asarray(crop_resize(pil, resolution)).reshape(resolution, resolution, c)
    return out


def _check_resolution(resolution: int | None) -> None:
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise ValueError(f"resolution must be a positive integer or None, got {resolution!r}")


def _visible(rel: Path) -> bool:
    return not any(part.startswith(".") for part in rel.parts)


def _list_images(root: Path) -> list[Path]:
    """Image files under root, recursively, skipping hidden files and folders; sorted."""
    rels = (
        p.relative_to(root)
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    return [root / r for r in sorted((r for r in rels if _visible(r)), key=Path.as_posix)]


def class_folders(root: str | Path) -> tuple[str, ...]:
    """Sorted names of root's visible first-level sub-folders: the class names, in index order."""
    return tuple(
        sorted(d.name for d in Path(root).iterdir() if d.is_dir() and _visible(Path(d.name)))
    )


def _decode(path: Path, resolution: int | None, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()  # first frame only for GIF/TIFF stacks
            img = img.convert(_MODES[channels])
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode image {path} ({e}); delete or replace the file") from e
    if resolution is None:
        w, h = img.size
        if w != h:
            raise ValueError(
                f"image {path} is {w}x{h}, not square; pass a resolution to centre-crop and resize"
            )
    else:
        img = crop_resize(img, resolution)
    return np.asarray(img, dtype=np.uint8).reshape(img.size[1], img.size[0], channels)


def _class_of(files: list[Path], root: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """Label = index of the file's first-level sub-folder in `class_folders(root)`."""
    names = class_folders(root)
    if not names:
        raise ValueError(
            f"class-conditional data needs one sub-folder per class under {root}, found none; "
            f"move each class's images into {root}/<class name>/"
        )
    parts = [f.relative_to(root).parts for f in files]
    loose = next((root / p[0] for p in parts if len(p) == 1), None)
    if loose is not None:
        raise ValueError(
            f"image {loose} is not inside a class sub-folder of {root}; with class "
            "conditioning every image must sit under <root>/<class name>/"
        )
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[p[0]] for p in parts], np.int64), names


def load_image_folder(
    path: str | Path, resolution: int | None, class_cond: bool = False, channels: int = 3
) -> ImageDataset:
    """Every image under `path` (recursive; extensions in IMAGE_EXTENSIONS, any case), in
    sorted relative-path order, centre-cropped and resized to `resolution` (None: keep the
    size, which must then be square and shared). Hidden files and folders are skipped. With
    `class_cond`, class = first-level sub-folder, indexed in sorted name order over all
    visible sub-folders (an empty one still takes an index, so two folders with the same
    sub-folder names agree). Returns uint8 [N, R, R, channels].
    """
    root = Path(path)
    _check_resolution(resolution)
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; pass an existing directory")
    files = _list_images(root)
    if not files:
        raise ValueError(
            f"no images found under {root}; expected files ending in {', '.join(IMAGE_EXTENSIONS)}"
        )
    labels, names = _class_of(files, root) if class_cond else (None, None)
    decoded = [_decode(f, resolution, channels) for f in files]
    sizes = sorted({d.shape[0] for d in decoded})
    if len(sizes) > 1:
        raise ValueError(
            f"images under {root} have different sizes {sizes}; pass a resolution to resize them"
        )
    return ImageDataset(
        images=np.stack(decoded),
        labels=labels,
        num_classes=len(names) if names else None,
        name=f"folder:{root}",
        class_names=names,
    )


def _images_from_npz(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    x = arrays[key]
    if x.dtype != np.uint8:
        raise ValueError(
            f"{path}[{key!r}] has dtype {x.dtype}; iddpm expects uint8 pixels in [0, 255] "
            "(convert with np.round(x * 255).astype(np.uint8) for floats in [0, 1])"
        )
    if key == "data" and x.ndim == 2:
        # downsampled-ImageNet layout: rows are flattened [3, H, W] (CHW) images
        side = math.isqrt(x.shape[1] // 3)
        if 3 * side * side != x.shape[1]:
            raise ValueError(
                f"{path}['data'] rows have {x.shape[1]} values, not 3*H*H; expected the "
                "downsampled-ImageNet layout [N, 3*H*W]"
            )
        return x.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)
    if x.ndim == 3:
        x = x[..., None]  # [N, H, W] grey
    if x.ndim != 4 or x.shape[-1] not in _MODES:
        raise ValueError(
            f"{path}[{key!r}] has shape {x.shape}; expected uint8 [N, H, W, C] with C in (1, 3) "
            "(channels last: transpose NCHW arrays with x.transpose(0, 2, 3, 1))"
        )
    return x


def _labels_from_npz(
    arrays: dict[str, np.ndarray], n: int, one_based: bool, path: Path
) -> np.ndarray | None:
    key = next((k for k in _LABEL_KEYS if k in arrays), None)
    if key is None:
        return None
    y = np.asarray(arrays[key])
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{path}[{key!r}] has {y.dtype} {y.shape}; labels must be integers of shape [{n}]"
        )
    y = y.astype(np.int64) - (1 if one_based else 0)
    if n and y.min() < 0:
        base = "1-based (downsampled-ImageNet layout)" if one_based else "0-based"
        raise ValueError(f"{path}[{key!r}] has labels below the first class; they must be {base}")
    return y


def load_npz(
    path: str | Path, key: str | None = None, resolution: int | None = None
) -> ImageDataset:
    """Images from a `.npz`: uint8 [N, H, W, C] (or [N, H, W] grey) under `key`, else the first
    of arr_0, images, x, data; optional integer labels under arr_1, labels or y (0-based).

    Also reads the downsampled-ImageNet layout: `data` uint8 [N, 3·H·W] rows in CHW order
    (H inferred from the row length) with 1-based `labels`, returned 0-based.
    num_classes = max label + 1. `resolution` crops/resizes with `crop_resize`.
    """
    path = Path(path)
    _check_resolution(resolution)
    if not path.is_file():
        raise FileNotFoundError(f"npz file {path} does not exist; pass an existing .npz file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ValueError(
            f"cannot read {path} as .npz ({e}); pass a file written by np.savez"
        ) from e
    if key is None:
        key = next((k for k in _IMAGE_KEYS if k in arrays), None)
    if key not in arrays:
        raise ValueError(
            f"{path} has no image array {key or ''} (keys: {', '.join(arrays) or 'none'}); "
            f"store uint8 images under one of: {', '.join(_IMAGE_KEYS)}"
        )
    images = _images_from_npz(arrays, key, path)
    if len(images) == 0:
        raise ValueError(f"{path}[{key!r}] holds no images; pass a file with at least one")
    imagenet = key == "data" and arrays[key].ndim == 2
    labels = _labels_from_npz(arrays, len(images), imagenet, path)
    if resolution is not None:
        images = resize_images(images, resolution)
    elif images.shape[1] != images.shape[2]:
        raise ValueError(
            f"{path} holds {images.shape[1]}x{images.shape[2]} images, not square; pass a "
            "resolution to centre-crop and resize them"
        )
    num_classes = None if labels is None else int(labels.max()) + 1
    return ImageDataset(np.ascontiguousarray(images), labels, num_classes, f"npz:{path}")
