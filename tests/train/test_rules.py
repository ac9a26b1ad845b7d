"""Pure training rules: batch splitting with its one-line errors, the lr schedule (warm-up,
annealing) and seed derivation."""

from __future__ import annotations

import pytest

from iddpm.train.rules import anneal_factor, derive_seed, learning_rate, split_batch, warmup_lr


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


def test_annealing_decays_linearly_to_zero_and_stays_there() -> None:
    # the authors' _anneal_lr: lr·(1 − step/N) before the update of 0-based step `step`
    assert [anneal_factor(s, 4) for s in range(6)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    assert anneal_factor(10**6, 0) == 1.0  # off


def test_warmup_and_annealing_multiply() -> None:
    lrs = [learning_rate(2.0, s, 2, 4) for s in range(5)]
    assert lrs == [2.0 * 0.5 * 1.0, 2.0 * 1.0 * 0.75, 2.0 * 0.5, 2.0 * 0.25, 0.0]
    assert [learning_rate(0.1, s, 4, 0) for s in range(6)] == [
        warmup_lr(0.1, s, 4) for s in range(6)
    ]


def test_derived_seeds_are_deterministic_and_distinct() -> None:
    seeds = {derive_seed(7, step, i) for step in range(50) for i in range(50)}
    assert len(seeds) == 2500 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(7, 3, 1) == derive_seed(7, 3, 1) != derive_seed(7, 1, 3)
