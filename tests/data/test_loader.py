"""Batch iteration: exact uint8 mapping, disjoint covering rank shards, exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from iddpm.data.loader import BatchIterator, ImageBatches, to_model_range

# ---------------------------------------------------------------- uint8 -> [-1, 1]


def test_to_model_range_endpoints_are_exact_and_levels_match_the_formula() -> None:
    levels = np.arange(256, dtype=np.uint8).reshape(1, 1, 256, 1)
    x = to_model_range(levels).flatten()
    assert x.dtype == torch.float32
    assert x[0].item() == -1.0 and x[255].item() == 1.0
    ref = np.arange(256) / 127.5 - 1.0  # float64 reference
    # one float32 rounding of the quotient and one of the difference: <= 2 ulp(1) = 2**-23
    assert np.abs(x.numpy().astype(np.float64) - ref).max() <= 2.0**-23
    assert torch.all(x[1:] > x[:-1])


def test_to_model_range_puts_zero_halfway_between_levels_127_and_128() -> None:
    x = to_model_range(np.array([127, 128], np.uint8).reshape(1, 1, 2, 1)).flatten().double()
    assert abs((x[0] + x[1]).item()) <= 2.0**-23  # midpoint 127.5 <-> 0
    assert x[1] - x[0] == pytest.approx(2 / 255, abs=2.0**-22)


def test_to_model_range_moves_channels_first_and_accepts_tensors() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 3, 5, 3), dtype=np.uint8)
    out = to_model_range(img)
    assert out.shape == (2, 3, 3, 5) and out.is_contiguous()
    n, h, w, c = 1, 2, 4, 2
    assert out[n, c, h, w].item() == pytest.approx(img[n, h, w, c] / 127.5 - 1, abs=1e-7)
    assert torch.equal(to_model_range(torch.from_numpy(img)), out)


@pytest.mark.parametrize(
    "bad", [np.zeros((1, 2, 2, 1), np.float32), np.zeros((2, 2, 1), np.uint8)], ids=["float", "3d"]
)
def test_to_model_range_rejects_non_uint8_or_non_4d(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"expects uint8 images \[N, H, W, C\]"):
        to_model_range(bad)


# ---------------------------------------------------------------- BatchIterator


def _epoch(it: BatchIterator) -> list[np.ndarray]:
    return [next(it) for _ in range(it.steps_per_epoch)]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_shards_are_disjoint_and_cover_the_epoch(world_size: int, drop_last: bool) -> None:
    n, b = 23, 4
    its = [BatchIterator(n, b, seed=7, rank=r, world_size=world_size, drop_last=drop_last)
           for r in range(world_size)]  # fmt: skip
    shards = [np.concatenate(_epoch(it)) for it in its]
    allx = np.concatenate(shards)
    assert len(np.unique(allx)) == len(allx)  # disjoint
    used = (n // (b * world_size)) * b * world_size if drop_last else n
    perm = np.random.default_rng((7, 0)).permutation(n)
    assert sorted(allx.tolist()) == sorted(perm[:used].tolist())  # covers the used slots
    for s in shards:
        assert s.dtype == np.int64


def test_drop_last_false_balances_the_last_partial_batch() -> None:
    n, b, w = 23, 4, 3  # one full global batch of 12, then 11 left: 4, 4, 3
    sizes = [[len(x) for x in _epoch(BatchIterator(n, b, 0, r, w, drop_last=False))]
             for r in range(w)]  # fmt: skip
    assert sizes == [[4, 4], [4, 4], [4, 3]]


def test_union_of_rank_batches_does_not_depend_on_the_rank_count() -> None:
    single = BatchIterator(40, 6, seed=3)
    ranks = [BatchIterator(40, 2, seed=3, rank=r, world_size=3) for r in range(3)]
    for _ in range(20):  # crosses several epochs (6 steps each)
        assert np.array_equal(next(single), np.concatenate([next(it) for it in ranks]))


def test_same_seed_same_order_and_other_seed_other_order() -> None:
    a = list(itertools.islice(BatchIterator(50, 5, seed=1), 25))
    b = list(itertools.islice(BatchIterator(50, 5, seed=1), 25))
    c = list(itertools.islice(BatchIterator(50, 5, seed=2), 25))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_each_epoch_is_the_documented_permutation_and_epochs_differ() -> None:
    it = BatchIterator(30, 10, seed=5)
    for epoch in range(3):
        got = np.concatenate(_epoch(it))
        assert np.array_equal(got, np.random.default_rng((5, epoch)).permutation(30))
    assert not np.array_equal(it.permutation(0), it.permutation(1))


@pytest.mark.parametrize("k", [0, 3, 5, 6, 11])  # 5 steps per epoch: boundaries included
def test_state_round_trip_continues_exactly(k: int) -> None:
    ref = BatchIterator(27, 5, seed=9)
    expected = list(itertools.islice(ref, k + 12))
    it = BatchIterator(27, 5, seed=9)
    for _ in range(k):
        next(it)
    state = it.state_dict()
    assert set(state) == {"epoch", "position"}
    fresh = BatchIterator(27, 5, seed=9)
    fresh.load_state_dict(dict(state))
    assert all(np.array_equal(next(fresh), e) for e in expected[k:])


def test_iterator_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"fewer than one global batch of 4 x 3 ranks = 12"):
        BatchIterator(10, 4, seed=0, world_size=3)
    with pytest.raises(ValueError, match=r"rank 3 is outside \[0, 3\)"):
        BatchIterator(100, 4, seed=0, rank=3, world_size=3)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        BatchIterator(100, 4, seed=-1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        BatchIterator(100, 0, seed=0)
    with pytest.raises(ValueError, match="num_items must be a positive integer"):
        BatchIterator(0, 1, seed=0, drop_last=False)
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        BatchIterator(10, 1, seed=0, world_size=0)


def test_load_state_dict_rejects_bad_state() -> None:
    it = BatchIterator(20, 5, seed=0)
    with pytest.raises(ValueError, match="expected epoch and position"):
        it.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="does not fit 4 steps per epoch"):
        it.load_state_dict({"epoch": 0, "position": 5})
    with pytest.raises(ValueError, match="does not fit"):
        it.load_state_dict({"epoch": -1, "position": 0})


# ---------------------------------------------------------------- ImageBatches


def _images(n: int = 40) -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, size=(n, 3, 4, 2), dtype=np.uint8)


def test_image_batches_map_the_drawn_indices() -> None:
    images, labels = _images(), np.arange(40) % 7
    batches = ImageBatches(images, labels, batch_size=8, seed=4)
    index = BatchIterator(40, 8, seed=4)
    for _ in range(7):
        b, idx = next(batches), next(index)
        assert b["x0"].dtype == torch.float32 and b["x0"].shape == (8, 2, 3, 4)
        assert torch.equal(b["x0"], to_model_range(images[idx]))
        assert b["y"].dtype == torch.int64 and torch.equal(b["y"], torch.from_numpy(labels[idx]))


def test_image_batches_without_labels_have_no_y() -> None:
    assert set(next(ImageBatches(_images(), None, 4, seed=0))) == {"x0"}


def test_random_flip_mirrors_about_half_the_images_left_right() -> None:
    images = _images(400)
    batches = ImageBatches(images, None, batch_size=50, seed=1, random_flip=True)
    index = BatchIterator(400, 50, seed=1)
    flipped = 0
    for _ in range(16):  # two epochs, 800 draws
        x, idx = next(batches)["x0"], next(index)
        plain = to_model_range(images[idx])
        mirror = torch.flip(plain, dims=[3])
        is_plain = (x == plain).flatten(1).all(1)
        is_mirror = (x == mirror).flatten(1).all(1)
        assert torch.all(is_plain | is_mirror)
        flipped += int((is_mirror & ~is_plain).sum())
    # Binomial(800, 1/2): 5 sigma = 5 * sqrt(800) / 2 ~ 71
    assert abs(flipped - 400) <= 5 * np.sqrt(800) / 2


def test_flips_and_order_do_not_depend_on_the_rank_count() -> None:
    images = _images(48)
    single = ImageBatches(images, None, 12, seed=2, random_flip=True)
    ranks = [ImageBatches(images, None, 4, seed=2, rank=r, world_size=3, random_flip=True)
             for r in range(3)]  # fmt: skip
    for _ in range(10):
        assert torch.equal(next(single)["x0"], torch.cat([next(r)["x0"] for r in ranks]))


@pytest.mark.parametrize("k", [0, 2, 5])
def test_image_batches_resume_exactly_with_flips(k: int) -> None:
    images, labels = _images(), np.arange(40)
    ref = ImageBatches(images, labels, 8, seed=3, random_flip=True)
    expected = [next(ref) for _ in range(k + 8)]
    run = ImageBatches(images, labels, 8, seed=3, random_flip=True)
    for _ in range(k):
        next(run)
    resumed = ImageBatches(images, labels, 8, seed=3, random_flip=True)
    resumed.load_state_dict(run.state_dict())
    for e in expected[k:]:
        got = next(resumed)
        assert torch.equal(got["x0"], e["x0"]) and torch.equal(got["y"], e["y"])


def test_image_batches_reject_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"images must be a uint8 numpy array \[N, H, W, C\]"):
        ImageBatches(np.zeros((4, 2, 2, 1), np.float32), None, 2, seed=0)
    with pytest.raises(ValueError, match=r"labels must be integers of shape \[4\]"):
        ImageBatches(np.zeros((4, 2, 2, 1), np.uint8), np.zeros(3, np.int64), 2, seed=0)
    with pytest.raises(ValueError, match=r"labels must be integers"):
        ImageBatches(np.zeros((4, 2, 2, 1), np.uint8), np.zeros(4, np.float32), 2, seed=0)


# ---------------------------------------------------------------- memory-mapped images


def _mapped(tmp_path, images: np.ndarray) -> np.ndarray:
    np.save(tmp_path / "images.npy", images)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
    return mapped


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("world_size", [1, 2])
def test_mapped_images_give_the_in_memory_batches_across_epochs_ranks_and_resume(
    tmp_path, world_size: int
) -> None:
    images, labels = _images(40), np.arange(40) % 5
    mapped = _mapped(tmp_path, images)

    def loaders(source: np.ndarray) -> list[ImageBatches]:
        return [
            ImageBatches(source, labels, 4, seed=6, rank=r, world_size=world_size,
                         random_flip=True)
            for r in range(world_size)
        ]  # fmt: skip

    memory, disk = loaders(images), loaders(mapped)
    for _ in range(12):  # 40 // (4·W) steps per epoch: several epochs
        for m, d in zip(memory, disk):
            assert _same(next(m), next(d))
    resumed = loaders(mapped)
    for r, d in zip(resumed, disk):
        r.load_state_dict(d.state_dict())
    for _ in range(7):
        for m, r in zip(memory, resumed):
            assert _same(next(m), next(r))


def test_a_mapped_batch_is_a_private_copy_of_its_rows(tmp_path) -> None:
    images = _images(40)
    mapped = _mapped(tmp_path, images)
    index = np.array([7, 3, 3, 21])
    rows = mapped[index]
    assert type(rows) is np.ndarray and rows.flags.writeable and rows.nbytes == 4 * 24
    rows[:] = 0  # flipping in place touches the copy, never the file
    assert np.array_equal(mapped, images)
    batches = ImageBatches(mapped, None, 8, seed=0, random_flip=True)
    for _ in range(10):
        next(batches)
    assert np.array_equal(np.load(tmp_path / "images.npy"), images)


def test_each_batch_asks_the_kernel_to_read_the_next_batchs_rows_ahead(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from iddpm.data import loader

    images = _images(40)
    mapped = _mapped(tmp_path, images)
    hints: list[tuple[int, int]] = []

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == loader.os.POSIX_FADV_WILLNEED
        hints.append((offset, length))

    monkeypatch.setattr(loader.os, "posix_fadvise", record, raising=False)
    batches = ImageBatches(mapped, None, 8, seed=2, rank=1, world_size=2, random_flip=True)
    index = BatchIterator(40, 8, seed=2, rank=1, world_size=2)
    next(index)
    row = 4 * 2 * 3  # bytes of one [3, 4, 2] uint8 image
    for _ in range(6):  # across the epoch boundary (2 steps per epoch)
        hints.clear()
        next(batches)
        upcoming = np.sort(next(index))
        assert hints == [(mapped.offset + int(r) * row, row) for r in upcoming]
    view = ImageBatches(mapped[:30], None, 8, seed=2)  # a view: numpy keeps no offset for it
    no_hint = ImageBatches(mapped, None, 8, seed=2, prefetch=False)
    hints.clear()
    assert _same(next(view), next(ImageBatches(images[:30], None, 8, seed=2)))
    assert _same(next(no_hint), next(ImageBatches(images, None, 8, seed=2)))
    assert hints == []
