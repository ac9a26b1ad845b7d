"""Data SPEC strings: each form, the split rules, labels iff class_cond, and the errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iddpm.data.spec import load_dataset


def _png(path: Path, value: int, size: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def _fake_cifar(root: Path) -> None:
    root.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = {b"data": np.full((2, 3072), i, np.uint8), b"labels": [i % 10, 9]}
        (root / name).write_bytes(pickle.dumps(batch))


def test_digits_spec_and_its_resolution_rule() -> None:
    train = load_dataset("digits")
    assert train.name == "digits-train" and train.labels is None and train.num_classes is None
    test = load_dataset("digits", "test", resolution=8, class_cond=True)
    assert len(test) == 355 and test.num_classes == 10 and test.labels is not None
    with pytest.raises(ValueError, match="the digits are 8x8, got resolution 16; use resolution 8"):
        load_dataset("digits", resolution=16)


def test_cifar_spec_splits_and_resizes(tmp_path: Path) -> None:
    _fake_cifar(tmp_path / "c")
    train = load_dataset(f"cifar10:{tmp_path / 'c'}", class_cond=True)
    assert train.images.shape == (10, 32, 32, 3) and train.labels.tolist()[:2] == [0, 9]
    test = load_dataset(f"cifar10:{tmp_path / 'c'}", "test", resolution=16)
    assert test.images.shape == (2, 16, 16, 3) and np.all(test.images == 5)
    assert test.labels is None
    with pytest.raises(ValueError, match="data spec 'cifar10:' names no folder; use cifar10:DIR"):
        load_dataset("cifar10:")


def test_npz_spec_is_one_split_served_whole(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, size=(6, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x, np.arange(6) % 2)
    for split in ("train", "test"):
        ds = load_dataset(str(tmp_path / "d.npz"), split, class_cond=True)
        assert np.array_equal(ds.images, x) and ds.num_classes == 2
    with (tmp_path / "nolabels.NPZ").open("wb") as f:  # np.savez(path) would append .npz
        np.savez(f, x)
    with pytest.raises(ValueError, match="class-conditional training needs labels, but npz:"):
        load_dataset(str(tmp_path / "nolabels.NPZ"), class_cond=True)


def test_plain_folder_is_one_split_served_whole(tmp_path: Path) -> None:
    _png(tmp_path / "a.png", 1)
    _png(tmp_path / "b.png", 2)
    for split in ("train", "test"):
        assert load_dataset(str(tmp_path), split).images[:, 0, 0, 0].tolist() == [1, 2]


def test_folder_with_train_and_test_uses_the_split_folder(tmp_path: Path) -> None:
    for split, value in (("train", 10), ("test", 20)):
        _png(tmp_path / split / "cat" / "x.png", value, size=8)
        _png(tmp_path / split / "dog" / "y.png", value + 1, size=8)
    test = load_dataset(str(tmp_path), "test", resolution=4, class_cond=True)
    assert test.images.shape == (2, 4, 4, 3) and test.images[:, 0, 0, 0].tolist() == [20, 21]
    assert test.labels.tolist() == [0, 1] and test.class_names == ("cat", "dog")
    assert test.name.endswith("test")
    (tmp_path / "test" / "emu").mkdir()
    with pytest.raises(ValueError, match="have different class sub-folders; give both the same"):
        load_dataset(str(tmp_path), "test", class_cond=True)


@pytest.mark.parametrize("spec", ["cifar100:/x", "", "no/such/folder", "mnist"])
def test_unknown_spec_lists_the_accepted_forms(spec: str) -> None:
    with pytest.raises(ValueError, match=r"unknown data spec .*use one of: digits, cifar10:DIR"):
        load_dataset(spec)


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown split 'valid'; choose one of: train, test"):
        load_dataset("digits", "valid")


def test_a_folder_of_npz_batches_points_to_prepare_data(tmp_path: Path) -> None:
    (tmp_path / "inet").mkdir()
    np.savez(tmp_path / "inet" / "train_data_batch_1.npz", data=np.zeros((2, 12), np.uint8))
    with pytest.raises(ValueError, match=r"inet holds \.npz files, not images; prepare them") as e:
        load_dataset(str(tmp_path / "inet"))
    assert "\n" not in str(e.value) and "iddpm prepare-data" in str(e.value)


def test_class_cond_none_keeps_the_labels_a_source_has(tmp_path: Path) -> None:
    x = np.zeros((4, 2, 2, 3), np.uint8)
    np.savez(tmp_path / "lab.npz", x, np.array([0, 1, 1, 0]))
    np.savez(tmp_path / "bare.npz", x)
    assert load_dataset(str(tmp_path / "lab.npz"), class_cond=None).labels.tolist() == [0, 1, 1, 0]
    assert load_dataset(str(tmp_path / "bare.npz"), class_cond=None).labels is None
    assert load_dataset(str(tmp_path / "lab.npz"), class_cond=False).labels is None
