"""Infinite, seeded, rank-sharded batches (docs/design.md §2, `data/loader.py`).

This module imports nothing from iddpm but the layer-0 `_tensor` helpers: the trainer
receives its batches from here through the CLI and never imports `iddpm.data` itself.

Order. Epoch e is the permutation `np.random.default_rng((seed, epoch)).permutation(N)`,
the same on every rank. The epoch is cut into *global* batches of G = batch_size ×
world_size consecutive slots, and rank r takes the r-th block of `batch_size` slots inside
each global batch. Hence:

- at every step the ranks' shards are disjoint, and over an epoch they cover every slot used;
- the union of the ranks' batches at step k is the same global batch whatever the rank
  count, as long as G is the same (so W ranks × B equals 1 rank × W·B, batch for batch).

`drop_last=True` (training): each epoch uses its first ⌊N / G⌋·G slots; the N mod G items
left over are skipped for that epoch only (the next permutation places others last).
`drop_last=False` (one pass for evaluation): the last global batch holds the N mod G
remaining slots, split into contiguous per-rank blocks as evenly as possible (the first
ranks get one more); a rank's last batch may be smaller than `batch_size`, even empty.

Resume. `state_dict()` is `{"epoch", "position"}`: the epoch of the last batch handed out and
how many global batches of it were handed out. Loading it continues with exactly the batch
that would have come next (the permutation is a pure function of (seed, epoch)).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from iddpm._tensor import to_model_range

FLIP_STREAM = 1  # third SeedSequence word of the random-flip stream, disjoint from (seed, epoch)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class BatchIterator:
    """Endless per-rank index batches: np int64 arrays of shape [batch_size] (see module doc).

    `batch_size` is per rank. All ranks must be built with the same (num_items, batch_size,
    seed, world_size, drop_last); only `rank` differs.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        _check_positive("num_items", num_items)
        _check_positive("batch_size", batch_size)
        _check_positive("world_size", world_size)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not 0 <= rank < world_size:
            raise ValueError(
                f"rank {rank} is outside [0, {world_size}); pass 0 <= rank < world_size"
            )
        global_batch = batch_size * world_size
        if drop_last and num_items < global_batch:
            raise ValueError(
                f"{num_items} items are fewer than one global batch of {batch_size} x "
                f"{world_size} ranks = {global_batch}; use a smaller batch size"
            )
        self.num_items, self.batch_size, self.seed = int(num_items), int(batch_size), int(seed)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), drop_last
        self.global_batch = global_batch
        self.epoch, self.position = 0, 0
        self._perm_epoch, self._perm = -1, np.empty(0, np.int64)

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch (the same on every rank)."""
        full, rest = divmod(self.num_items, self.global_batch)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def permutation(self, epoch: int) -> np.ndarray:
        """The epoch's order of item indices: int64 [num_items], shared by all ranks."""
        if epoch != self._perm_epoch:
            rng = np.random.default_rng((self.seed, epoch))
            self._perm = rng.permutation(self.num_items).astype(np.int64)
            self._perm_epoch = epoch
        return self._perm

    def _rank_slots(self, position: int) -> tuple[int, int]:
        """[start, stop) of this rank's slots in the epoch permutation at global step `position`."""
        start = position * self.global_batch
        size = min(self.global_batch, self.num_items - start)
        if size == self.global_batch:
            lo = start + self.rank * self.batch_size
            return lo, lo + self.batch_size
        # last partial batch (drop_last=False only): balanced contiguous blocks
        base, extra = divmod(size, self.world_size)
        lo = start + self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def _upcoming(self) -> tuple[int, int]:
        """(epoch, position) of the next global batch."""
        if self.position >= self.steps_per_epoch:
            return self.epoch + 1, 0
        return self.epoch, self.position

    def peek_slots(self) -> tuple[int, int, int]:
        """(epoch, start, stop) that `next_slots` will return next, without advancing."""
        epoch, position = self._upcoming()
        return (epoch, *self._rank_slots(position))

    def next_slots(self) -> tuple[int, int, int]:
        """Advance one step; return (epoch, start, stop) of this rank's slots in that epoch."""
        self.epoch, self.position = self._upcoming()
        start, stop = self._rank_slots(self.position)
        self.position += 1
        return self.epoch, start, stop

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        epoch, start, stop = self.next_slots()
        return self.permutation(epoch)[start:stop].copy()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"epoch", "position"}:
            raise ValueError(
                f"batch iterator state has keys {sorted(state)}; expected epoch and position"
            )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.steps_per_epoch:
            raise ValueError(
                f"batch iterator state epoch={epoch} position={position} does not fit "
                f"{self.steps_per_epoch} steps per epoch; resume with the same data and batch size"
            )
        self.epoch, self.position = epoch, position


def _mapped_file(images: np.ndarray) -> tuple[str, int, int] | None:
    """(file, byte offset of row 0, bytes per row) when `images` is a whole np.memmap of a
    file in C order (not a view of one, whose offset numpy does not track), else None."""
    whole = isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap)
    if not (whole and images.flags.c_contiguous and images.filename):
        return None
    if not hasattr(os, "posix_fadvise"):  # e.g. macOS: no readahead hints
        return None
    return str(images.filename), int(images.offset), int(images.strides[0])


class ImageBatches:
    """Endless training batches from uint8 images: dict(x0=float32 [B, C, H, W] in [−1, 1],
    y=int64 [B] when labels are given).

    images: uint8 [N, H, W, C]; labels: integer [N] or None. `batch_size` is per rank.
    With `random_flip`, slot j of epoch e is mirrored left-right iff
    `default_rng((seed, e, FLIP_STREAM)).random(N)[j] < 0.5`: a pure function of
    (seed, epoch, slot), so resuming and changing the rank count give the same flips.

    Memory-mapped images (a prepared dataset, `np.load(mmap_mode="r")`): each batch reads
    only its rows (fancy indexing copies them), so a rank holds its batches, not the data.
    With `prefetch`, after each batch the kernel is asked (posix_fadvise WILLNEED) to start
    reading the next batch's rows from disk while this one trains; a hint only, so batches
    are the same with it or without.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | None,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        random_flip: bool = False,
        drop_last: bool = True,
        prefetch: bool = True,
    ) -> None:
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be a uint8 numpy array [N, H, W, C], got "
                f"{getattr(images, 'dtype', type(images).__name__)} "
                f"{tuple(getattr(images, 'shape', ()))}; load them with iddpm.data"
            )
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(
                    f"labels must be integers of shape [{len(images)}], got {labels.dtype} "
                    f"{labels.shape}; pass one class index per image or None"
                )
            labels = labels.astype(np.int64)
        self.images, self.labels, self.random_flip = images, labels, random_flip
        self.index = BatchIterator(len(images), batch_size, seed, rank, world_size, drop_last)
        self._flip_epoch, self._flip = -1, np.empty(0, bool)
        self._file = _mapped_file(images) if prefetch else None

    def _flips(self, epoch: int) -> np.ndarray:
        if epoch != self._flip_epoch:
            rng = np.random.default_rng((self.index.seed, epoch, FLIP_STREAM))
            self._flip, self._flip_epoch = rng.random(self.index.num_items) < 0.5, epoch
        return self._flip

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        epoch, start, stop = self.index.next_slots()
        idx = self.index.permutation(epoch)[start:stop]
        batch = self.images[idx]  # fancy indexing copies, so flipping in place is safe
        if self.random_flip:
            flip = self._flips(epoch)[start:stop]
            batch[flip] = batch[flip][:, :, ::-1, :]
        out = {"x0": to_model_range(batch)}
        if self.labels is not None:
            out["y"] = torch.from_numpy(self.labels[idx])
        if self._file is not None:
            self._prefetch_next()
        return out

    def _prefetch_next(self) -> None:
        """Ask the kernel to read the next batch's rows ahead (asynchronous readahead)."""
        path, offset, row = self._file
        epoch, start, stop = self.index.peek_slots()
        rows = np.sort(self.index.permutation(epoch)[start:stop])
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return  # a hint only: reading the batch itself will report real errors
        try:
            for r in rows.tolist():
                os.posix_fadvise(fd, offset + r * row, row, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def state_dict(self) -> dict[str, int]:
        return self.index.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index.load_state_dict(state)
