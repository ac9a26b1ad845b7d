"""Image datasets held as uint8, from a folder of image files or a `.npz` (docs/design.md §2).

Images stay uint8 [N, H, W, C] (C = 1 for grey, 3 for RGB) until a batch is drawn; only then
`to_model_range` maps them to float32 [N, C, H, W] in [−1, 1] with x/127.5 − 1 (docs/paper.md),
so the discretised decoder sees exact bin centres. `to_uint8` is its rounding inverse.

Resizing: each image is centre-cropped to a square (side = its short side, offsets floored)
and then resized with ONE Pillow BICUBIC resize. Pillow widens the bicubic kernel by the
downscale factor, so a large downscale is already antialiased; no box pre-pass is needed.
No torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from iddpm._tensor import to_model_range, to_uint8
from iddpm.data.npz import read_npz

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageDataset",
    "class_folders",
    "crop_resize",
    "decode_image",
    "image_folder_files",
    "load_image_folder",
    "load_npz",
    "resize_images",
    "to_model_range",
    "to_uint8",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class ImageDataset:
    """A labelled or unlabelled set of uint8 images.

    images: uint8 [N, H, W, C], C ∈ {1, 3} (an in-memory array, or a read-only np.memmap
    for a prepared dataset: nothing here reads or copies its pixels); labels: int64 [N] in
    [0, num_classes) or None; class_names: one name per class index when known (folder
    names, CIFAR-10 classes).
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


def _to_8bit(img: Image.Image, path: Path) -> Image.Image:
    """16-bit grey (Pillow modes I;16*) becomes 8-bit L by round(v·255/65535); 32-bit integer
    or float images (modes I, F) are accepted only when every value already lies in 0..255."""
    if img.mode.startswith("I;16"):
        v = np.asarray(img).astype(np.uint32)
        # round(v / 257) in integers: v / 257 + 1/2 is never a tie for integer v
        return Image.fromarray(((2 * v + 257) // 514).astype(np.uint8))
    if img.mode in ("I", "F"):
        v = np.asarray(img)
        if v.size and (v.min() < 0 or v.max() > 255):
            raise ValueError(
                f"image {path} has {img.mode}-mode pixels in [{v.min()}, {v.max()}], outside "
                "0..255; convert it to 8 bits per channel (16-bit PNGs are read as such)"
            )
    return img


def decode_image(path: str | Path, resolution: int | None, channels: int = 3) -> np.ndarray:
    """One image file as uint8 [R, R, channels] (grey or RGB), centre-cropped and resized to
    `resolution` (None: kept, and it must be square). 16-bit grey is scaled to 8 bits with
    round(v·255/65535); Pillow itself reduces 16-bit RGB(A) PNGs to their high byte."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # first frame only for GIF/TIFF stacks; the pixels stay after close
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot decode image {path} ({e}); delete or replace the file") from e
    img = _to_8bit(img, path)
    try:
        img = img.convert(_MODES[channels])
    except ValueError as e:
        raise ValueError(
            f"cannot convert image {path} from mode {img.mode} to {_MODES[channels]} ({e}); "
            "save it as 8-bit RGB or grey"
        ) from e
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


def image_folder_files(
    path: str | Path, class_cond: bool | None = False
) -> tuple[list[Path], np.ndarray | None, tuple[str, ...] | None]:
    """The image files under `path` (see `load_image_folder` for the order) and their labels.

    class_cond True: label = index of the first-level sub-folder in `class_folders`; False:
    no labels; None: labels exactly when every image sits inside a class sub-folder.
    Returns (files, int64 [N] labels or None, class names or None). Nothing is decoded.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; pass an existing directory")
    files = _list_images(root)
    if not files:
        raise ValueError(
            f"no images found under {root}; put files ending in {', '.join(IMAGE_EXTENSIONS)} "
            "there or pass another folder"
        )
    if class_cond is None:
        class_cond = all(len(f.relative_to(root).parts) > 1 for f in files)
    labels, names = _class_of(files, root) if class_cond else (None, None)
    return files, labels, names


def load_image_folder(
    path: str | Path,
    resolution: int | None,
    class_cond: bool | None = False,
    channels: int = 3,
) -> ImageDataset:
    """Every image under `path` (recursive; extensions in IMAGE_EXTENSIONS, any case), in
    sorted relative-path order, centre-cropped and resized to `resolution` (None: keep the
    size, which must then be square and shared). Hidden files and folders are skipped. With
    `class_cond`, class = first-level sub-folder, indexed in sorted name order over all
    visible sub-folders (an empty one still takes an index, so two folders with the same
    sub-folder names agree); `class_cond=None` reads classes exactly when every image sits in
    a class sub-folder. Returns uint8 [N, R, R, channels].
    """
    root = Path(path)
    _check_resolution(resolution)
    if channels not in _MODES:
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    files, labels, names = image_folder_files(root, class_cond)
    decoded = [decode_image(f, resolution, channels) for f in files]
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


def load_npz(
    path: str | Path, key: str | None = None, resolution: int | None = None
) -> ImageDataset:
    """Images from a `.npz`: uint8 [N, H, W, C] (or [N, H, W] grey) under `key`, else the first
    of arr_0, images, x, data; optional integer labels under arr_1, labels or y (0-based).

    Also reads the downsampled-ImageNet layout: `data` uint8 [N, 3·H·W] rows in CHW order
    (H inferred from the row length) with 1-based `labels`, returned 0-based.
    num_classes = max label + 1. `resolution` crops/resizes with `crop_resize`.
    A missing file raises FileNotFoundError; a truncated or corrupt one a one-line ValueError.
    """
    path = Path(path)
    _check_resolution(resolution)
    images, labels = read_npz(path, key)
    if resolution is not None:
        images = resize_images(images, resolution)
    elif images.shape[1] != images.shape[2]:
        raise ValueError(
            f"{path} holds {images.shape[1]}x{images.shape[2]} images, not square; pass a "
            "resolution to centre-crop and resize them"
        )
    num_classes = None if labels is None else int(labels.max()) + 1
    return ImageDataset(np.ascontiguousarray(images), labels, num_classes, f"npz:{path}")
