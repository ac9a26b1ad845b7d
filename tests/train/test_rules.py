"""Pure training rules: batch splitting with its one-line errors, warm-up and seed derivation."""

from __future__ import annotations

import pytest

from iddpm.train.rules import derive_seed, split_batch, warmup_lr


@pytest.mark.parametrize(
    ("batch", "world", "micro", "message"),
    [
        (
            30,
            4,
            2,
            "--batch-size 30 is not divisible by 4 ranks × micro-batch 2; use a multiple of 8",
        ),
        (30, 4, 0, "--batch-size 30 is not divisible by 4 ranks; use a multiple of 4"),
        (6, 1, 4, "--batch-size 6 is not divisible by 1 rank × micro-batch 4; use a multiple of 4"),
    ],
)
def test_batch_size_must_divide_by_ranks_times_microbatch(batch, world, micro, message) -> None:
    with pytest.raises(ValueError) as e:
        split_batch(batch, world, micro)
    assert str(e.value) == message


def test_batch_split_is_per_rank_then_micro() -> None:
    assert split_batch(32, 4, 2) == (8, 2)
    assert split_batch(32, 4, 0) == (8, 8)
    assert split_batch(8, 1, 0) == (8, 8)


def test_warmup_is_linear_then_constant() -> None:
    assert [warmup_lr(1.0, s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_lr(0.1, 0, 0) == 0.1


def test_derived_seeds_are_deterministic_and_distinct() -> None:
    seeds = {derive_seed(7, step, i) for step in range(50) for i in range(50)}
    assert len(seeds) == 2500 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(7, 3, 1) == derive_seed(7, 3, 1) != derive_seed(7, 1, 3)
