"""uint8 image datasets: exact decoding round trip, crop/resize, folder and npz loaders."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from iddpm.data.images import (
    ImageDataset,
    crop_resize,
    decode_image,
    image_folder_files,
    load_image_folder,
    load_npz,
    resize_images,
    to_model_range,
    to_uint8,
)

# ---------------------------------------------------------------- to_uint8


def test_uint8_float_uint8_round_trip_is_the_identity() -> None:
    levels = np.arange(256, dtype=np.uint8)
    img = np.stack([levels, levels[::-1], np.roll(levels, 7)], -1).reshape(4, 8, 8, 3)
    assert np.array_equal(to_uint8(to_model_range(img)), img)


def test_to_uint8_rounds_to_the_nearest_level_instead_of_truncating() -> None:
    step = 2 / 255
    k = torch.arange(1, 255, dtype=torch.float64)
    centre = k / 127.5 - 1
    for offset in (-0.45 * step, 0.45 * step):  # within half a level of k: must give k
        x = (centre + offset).float().reshape(1, 1, 1, -1)
        assert np.array_equal(to_uint8(x).flatten(), k.numpy().astype(np.uint8))


def test_to_uint8_clips_and_returns_channels_last() -> None:
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 1, 5)
    assert to_uint8(x).flatten().tolist() == [0, 0, 128, 255, 255]  # 127.5 ties to even: 128
    y = torch.zeros(2, 3, 4, 5)
    y[1, 2, 3, 4] = 1.0
    out = to_uint8(y)
    assert out.shape == (2, 4, 5, 3) and out.dtype == np.uint8 and out[1, 3, 4, 2] == 255


@pytest.mark.parametrize(
    "bad",
    [np.zeros((1, 1, 2, 2)), torch.zeros(3, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.int64)],
)
def test_to_uint8_rejects_non_float_4d_tensors(bad: object) -> None:
    with pytest.raises(ValueError, match=r"to_uint8 expects a float tensor \[N, C, H, W\]"):
        to_uint8(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- crop / resize


def _sides_and_centre(h: int, w: int, centre: int = 200) -> np.ndarray:
    """RGB [h, w, 3]: the centred square (offset floored) is `centre`, the rest differs."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (10, 20, 30)
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    img[top : top + s, left : left + s] = centre
    return img


@pytest.mark.parametrize(("h", "w"), [(6, 12), (12, 6), (4, 7), (9, 5)])
def test_crop_keeps_exactly_the_centred_square(h: int, w: int) -> None:
    img = np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    out = np.asarray(crop_resize(Image.fromarray(img), s))
    assert np.array_equal(out, img[top : top + s, left : left + s])


@pytest.mark.parametrize(("h", "w", "res"), [(16, 40, 4), (40, 16, 8), (5, 9, 10)])
def test_resize_of_the_cropped_square_only_sees_the_square(h: int, w: int, res: int) -> None:
    out = np.asarray(crop_resize(Image.fromarray(_sides_and_centre(h, w)), res))
    assert out.shape == (res, res, 3) and np.all(out == 200)  # bicubic of a constant is it


def test_downscale_is_antialiased() -> None:
    # a 1-pixel checkerboard averages to 127.5; point sampling would give all 0 or all 255
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    out = np.asarray(crop_resize(Image.fromarray(board, "L"), 8)).astype(float)
    assert np.all(np.abs(out - 127.5) <= 1.0)


def test_resize_images_handles_grey_and_is_a_noop_at_size() -> None:
    grey = np.full((3, 6, 10, 1), 77, np.uint8)
    out = resize_images(grey, 4)
    assert out.shape == (3, 4, 4, 1) and np.all(out == 77)
    square = np.zeros((2, 4, 4, 3), np.uint8)
    assert resize_images(square, 4) is square


# ---------------------------------------------------------------- ImageDataset


def test_dataset_properties_and_validation() -> None:
    ds = ImageDataset(np.zeros((5, 6, 6, 3), np.uint8), np.arange(5), 5, "toy")
    assert (len(ds), ds.resolution, ds.channels) == (5, 6, 3)
    with pytest.raises(ValueError, match=r"images must be uint8 \[N, H, W, C\] with C in \(1, 3\)"):
        ImageDataset(np.zeros((5, 6, 6, 3), np.float32), None, None, "toy")
    with pytest.raises(ValueError, match=r"images must be uint8"):
        ImageDataset(np.zeros((5, 6, 6, 2), np.uint8), None, None, "toy")
    with pytest.raises(ValueError, match=r"labels must be int64 \[5\]"):
        ImageDataset(np.zeros((5, 6, 6, 1), np.uint8), np.arange(5, dtype=np.int32), 5, "toy")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=4\)"):
        ImageDataset(np.zeros((5, 6, 6, 1), np.uint8), np.arange(5), 4, "toy")
    with pytest.raises(ValueError, match=r"num_classes=None"):
        ImageDataset(np.zeros((5, 6, 6, 1), np.uint8), np.arange(5), None, "toy")


# ---------------------------------------------------------------- image folders


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _rgb(seed: int, h: int = 6, w: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    """b/1.png, b/deep/2.bmp, a/3.PNG, a/4.tiff, c/ (empty), a/.hidden.png, notes.txt."""
    _save(tmp_path / "b" / "1.png", _rgb(1))
    _save(tmp_path / "b" / "deep" / "2.bmp", _rgb(2))
    _save(tmp_path / "a" / "3.PNG", _rgb(3))
    _save(tmp_path / "a" / "4.tiff", _rgb(4))
    _save(tmp_path / "a" / ".hidden.png", _rgb(5))
    (tmp_path / "c").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_folder_is_read_recursively_in_sorted_order_with_exact_pixels(class_tree: Path) -> None:
    ds = load_image_folder(class_tree, resolution=None)
    assert ds.images.shape == (4, 6, 6, 3) and ds.images.dtype == np.uint8
    for got, seed in zip(ds.images, [3, 4, 1, 2]):  # a/3, a/4, b/1, b/deep/2
        assert np.array_equal(got, _rgb(seed))
    assert ds.labels is None and ds.num_classes is None


def test_class_is_the_first_level_sub_folder_in_sorted_order(class_tree: Path) -> None:
    ds = load_image_folder(class_tree, resolution=None, class_cond=True)
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.class_names == ("a", "b", "c") and ds.num_classes == 3  # empty c keeps an index


def test_folder_files_take_classes_when_asked_or_when_every_image_has_one(
    class_tree: Path,
) -> None:
    files, labels, names = image_folder_files(class_tree, class_cond=None)  # all in a class
    assert [f.name for f in files] == ["3.PNG", "4.tiff", "1.png", "2.bmp"]
    assert labels.tolist() == [0, 0, 1, 1] and names == ("a", "b", "c")
    assert image_folder_files(class_tree, class_cond=False)[1:] == (None, None)
    _save(class_tree / "loose.png", _rgb(9))  # one image outside every class: no labels
    files, labels, names = image_folder_files(class_tree, class_cond=None)
    assert len(files) == 5 and labels is None and names is None
    with pytest.raises(ValueError, match=r"loose\.png is not inside a class sub-folder"):
        image_folder_files(class_tree, class_cond=True)


def test_folder_resizes_and_converts_to_grey(tmp_path: Path) -> None:
    _save(tmp_path / "x.png", _sides_and_centre(8, 20))
    _save(tmp_path / "y.gif", np.full((5, 5, 3), 200, np.uint8))
    _save(tmp_path / "z.jpg", np.full((30, 30, 3), 200, np.uint8))
    ds = load_image_folder(tmp_path, resolution=4, channels=1)
    assert ds.images.shape == (3, 4, 4, 1)
    assert np.all(np.abs(ds.images.astype(int) - 200) <= 2)  # L = grey of (200,200,200); jpeg ±


def test_folder_errors_name_the_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"image folder {missing} does not exist")
    ):
        load_image_folder(missing, 8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match=r"no images found under .*empty; put files ending in"):
        load_image_folder(tmp_path / "empty", 8)
    bad = tmp_path / "corrupt" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match=r"cannot decode image .*broken\.png .*delete or replace"):
        load_image_folder(bad.parent, 8)
    with pytest.raises(ValueError, match="channels must be 1 \\(grey\\) or 3 \\(RGB\\), got 4"):
        load_image_folder(tmp_path, 8, channels=4)
    with pytest.raises(ValueError, match="resolution must be a positive integer or None, got 0"):
        load_image_folder(tmp_path, 0)


def test_sixteen_bit_grey_png_is_scaled_to_eight_bits_with_rounding(tmp_path: Path) -> None:
    edges = [0, 128, 129, 257, 385, 386, 65406, 65407, 32767, 32768, 32896, 65535, 2, 3, 4, 5]
    v = np.array(edges, np.uint16).reshape(4, 4)  # values on both sides of rounding edges
    Image.fromarray(v).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    grey = decode_image(tmp_path / "deep.png", None, channels=1)[..., 0]
    # round(v / 257): 128 -> 0, 129 -> 1, 385 -> 1, 386 -> 2, 65406 -> 254, 65407 -> 255
    expected = np.floor(v.astype(np.float64) * 255.0 / 65535.0 + 0.5)
    assert grey.tolist() == expected.tolist()
    assert grey.ravel()[:8].tolist() == [0, 0, 1, 1, 1, 2, 254, 255]
    rgb = decode_image(tmp_path / "deep.png", None, channels=3)
    assert np.array_equal(rgb, np.repeat(grey[..., None], 3, axis=2))


def test_wide_integer_pixels_outside_0_255_are_refused_not_saturated(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 70000], [5, 6]], np.int32)).save(tmp_path / "wide.tiff")
    assert Image.open(tmp_path / "wide.tiff").mode == "I"
    with pytest.raises(ValueError, match=r"wide\.tiff has I-mode pixels in \[0, 70000\]"):
        decode_image(tmp_path / "wide.tiff", None)
    Image.fromarray(np.array([[0, 200], [5, 6]], np.int32)).save(tmp_path / "ok.tiff")
    assert decode_image(tmp_path / "ok.tiff", None, 1)[..., 0].tolist() == [[0, 200], [5, 6]]


def test_folder_needs_square_same_size_images_without_resolution(tmp_path: Path) -> None:
    _save(tmp_path / "wide" / "a.png", _rgb(0, 4, 6))
    with pytest.raises(ValueError, match=r"a\.png is 6x4, not square; pass a resolution"):
        load_image_folder(tmp_path / "wide", None)
    _save(tmp_path / "mixed" / "a.png", _rgb(0, 4, 4))
    _save(tmp_path / "mixed" / "b.png", _rgb(0, 5, 5))
    with pytest.raises(ValueError, match=r"different sizes \[4, 5\]; pass a resolution"):
        load_image_folder(tmp_path / "mixed", None)


def test_class_cond_folder_errors(tmp_path: Path) -> None:
    _save(tmp_path / "flat" / "a.png", _rgb(0))
    with pytest.raises(ValueError, match=r"one sub-folder per class under .*flat, found none"):
        load_image_folder(tmp_path / "flat", None, class_cond=True)
    _save(tmp_path / "mixed" / "cls" / "a.png", _rgb(0))
    _save(tmp_path / "mixed" / "loose.png", _rgb(1))
    with pytest.raises(ValueError, match=r"loose\.png is not inside a class sub-folder"):
        load_image_folder(tmp_path / "mixed", None, class_cond=True)


# ---------------------------------------------------------------- npz


def _nhwc(n: int = 5, h: int = 4, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, h, c), dtype=np.uint8)


@pytest.mark.parametrize(("ikey", "lkey"), [("arr_0", "arr_1"), ("images", "labels"), ("x", "y")])
def test_npz_reads_images_and_labels_under_each_key(tmp_path: Path, ikey: str, lkey: str) -> None:
    x, y = _nhwc(), np.array([0, 2, 1, 2, 0])
    np.savez(tmp_path / "d.npz", **{ikey: x, lkey: y})
    ds = load_npz(tmp_path / "d.npz")
    assert np.array_equal(ds.images, x) and ds.labels.tolist() == y.tolist()
    assert ds.num_classes == 3 and ds.labels.dtype == np.int64


def test_npz_without_labels_and_grey_3d_and_explicit_key(tmp_path: Path) -> None:
    grey = _nhwc(c=1)[..., 0]
    np.savez(tmp_path / "g.npz", other=grey)
    ds = load_npz(tmp_path / "g.npz", key="other")
    assert ds.images.shape == (5, 4, 4, 1) and ds.labels is None and ds.num_classes is None


def test_npz_downsampled_imagenet_layout(tmp_path: Path) -> None:
    x = _nhwc(n=6, h=8)
    rows = x.transpose(0, 3, 1, 2).reshape(6, -1)  # CHW-flattened rows
    np.savez(tmp_path / "inet.npz", data=rows, labels=np.array([1, 5, 1000, 2, 3, 1]))
    ds = load_npz(tmp_path / "inet.npz")
    assert np.array_equal(ds.images, x)
    assert ds.labels.tolist() == [0, 4, 999, 1, 2, 0] and ds.num_classes == 1000
    np.savez(tmp_path / "zero.npz", data=rows, labels=np.zeros(6, int))
    with pytest.raises(ValueError, match="labels below the first class; they must be 1-based"):
        load_npz(tmp_path / "zero.npz")
    np.savez(tmp_path / "odd.npz", data=np.zeros((2, 3 * 8 * 8 + 3), np.uint8))
    with pytest.raises(ValueError, match=r"rows have 195 values, not 3\*H\*H"):
        load_npz(tmp_path / "odd.npz")


def test_npz_resolution_resizes(tmp_path: Path) -> None:
    np.savez(tmp_path / "c.npz", np.full((2, 6, 10, 3), 9, np.uint8))
    ds = load_npz(tmp_path / "c.npz", resolution=3)
    assert ds.images.shape == (2, 3, 3, 3) and np.all(ds.images == 9)
    with pytest.raises(ValueError, match=r"holds 6x10 images, not square; pass a resolution"):
        load_npz(tmp_path / "c.npz")


def test_npz_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"npz file .*missing\.npz does not exist"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"junk\.npz is not a readable \.npz \(.*not a zip"):
        load_npz(tmp_path / "junk.npz")
    cases = {
        "f.npz": (
            {"arr_0": np.zeros((2, 4, 4, 3), np.float32)},
            "has dtype float32; iddpm expects",
        ),
        "nchw.npz": ({"arr_0": np.zeros((2, 3, 4, 4), np.uint8)}, r"transpose NCHW arrays"),
        "keys.npz": ({"foo": np.zeros(3)}, r"no image array  \(keys: foo\); store uint8 images"),
        "lab.npz": (
            {"arr_0": _nhwc(), "labels": np.zeros(4, int)},
            r"labels must be integers of shape \[5\]",
        ),
        "neg.npz": ({"arr_0": _nhwc(), "y": np.full(5, -1)}, "below the first class.*0-based"),
        "empty.npz": ({"arr_0": np.zeros((0, 4, 4, 3), np.uint8)}, "holds no images"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError, match=message):
            load_npz(tmp_path / name)
    np.savez(tmp_path / "k.npz", arr_0=_nhwc())
    with pytest.raises(ValueError, match="no image array images"):
        load_npz(tmp_path / "k.npz", key="images")
