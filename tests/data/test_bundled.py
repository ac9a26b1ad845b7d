"""The bundled digits: exact grey-level mapping and a split that never changes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_digits

from iddpm.data.bundled import digit_levels_to_uint8, is_test_image, load_digits


@pytest.fixture(scope="module")
def splits() -> dict:
    return {s: load_digits(s) for s in ("train", "test")}


def test_grey_levels_map_by_rounding_v_times_255_over_16() -> None:
    v = np.arange(17)
    exact = (2 * 255 * v + 16) // 32  # floor(255 v / 16 + 1/2) in integers
    assert digit_levels_to_uint8(v).tolist() == exact.tolist()
    assert digit_levels_to_uint8(np.array([0.0, 8.0, 16.0])).tolist() == [0, 128, 255]


def test_split_sizes_are_pinned_and_shapes_match_the_contract(splits: dict) -> None:
    train, test = splits["train"], splits["test"]
    assert (len(train), len(test)) == (1442, 355)  # keep forever: results are compared on these
    for ds in (train, test):
        assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (8, 8, 1)
        assert ds.labels.dtype == np.int64 and ds.num_classes == 10
        assert ds.resolution == 8 and ds.channels == 1
    assert (train.name, test.name) == ("digits-train", "digits-test")


def test_splits_are_disjoint_cover_all_1797_and_equal_the_mapped_sklearn_data(
    splits: dict,
) -> None:
    ref = sklearn_digits()
    images = digit_levels_to_uint8(ref.images)[..., None]
    mask = is_test_image(ref.target)
    assert mask.sum() + (~mask).sum() == 1797 == len(images)
    assert np.array_equal(splits["test"].images, images[mask])
    assert np.array_equal(splits["train"].images, images[~mask])
    assert np.array_equal(splits["test"].labels, ref.target[mask])
    assert np.array_equal(splits["train"].labels, ref.target[~mask])


def test_the_test_split_is_every_fifth_image_of_each_class() -> None:
    labels = sklearn_digits().target
    mask = is_test_image(labels)
    for c in range(10):
        in_class = mask[labels == c]
        assert in_class.sum() == len(in_class) // 5
        assert np.flatnonzero(in_class).tolist() == list(range(4, len(in_class), 5))


def test_digits_use_all_17_levels_including_both_ends(splits: dict) -> None:
    levels = set(np.unique(np.concatenate([splits["train"].images, splits["test"].images])))
    assert levels == set(digit_levels_to_uint8(np.arange(17)).tolist())


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(
        ValueError, match="unknown split 'val' for digits; choose one of: train, test"
    ):
        load_digits("val")
