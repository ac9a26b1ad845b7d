"""Improved precision and recall (Kynkäänniemi et al. 2019): hand-checked cases, limits,
block-size invariance against a brute-force reference, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iddpm.eval.precision_recall import PrecisionRecall, knn_squared_radii, precision_recall

# 1-D hand example: real R = {0, 1, 2, 4, 8}, fake F = {−2, 0.5, 3, 12, 13}.
REAL = np.array([[0.0], [1.0], [2.0], [4.0], [8.0]])
FAKE = np.array([[-2.0], [0.5], [3.0], [12.0], [13.0]])


def test_hand_example_with_k_1() -> None:
    # Real radii (nearest other real point): 0→1: 1, 1→0: 1, 2→1: 1, 4→2: 2, 8→4: 4, so the
    # real manifold is [−1, 1] ∪ [0, 2] ∪ [1, 3] ∪ [2, 6] ∪ [4, 12] = [−1, 12].
    # Fakes inside: 0.5, 3 and 12 (exactly on the edge of 8's ball: |12 − 8| = 4 ≤ 4);
    # −2 and 13 are outside → precision 3/5.
    # Fake radii: −2→0.5: 2.5, 0.5→−2 or 3: 2.5, 3→0.5: 2.5, 12→13: 1, 13→12: 1, so the fake
    # manifold is [−4.5, 0.5] ∪ [−2, 3] ∪ [0.5, 5.5] ∪ [11, 13] ∪ [12, 14].
    # Reals inside: 0, 1, 2, 4; 8 is not (5.5 < 8 < 11) → recall 4/5.
    pr = precision_recall(REAL, FAKE, k=1)
    assert pr == PrecisionRecall(precision=0.6, recall=0.8, k=1, num_real=5, num_fake=5)


def test_hand_example_with_k_2() -> None:
    # Real radii (2nd nearest): 0: {1, 2, 4, 8} → 2; 1: {1, 1, 3, 7} → 1; 2: {2, 1, 2, 6} → 2;
    # 4: {4, 3, 2, 4} → 3; 8: {8, 7, 6, 4} → 6. Balls [−2, 2], [0, 2], [0, 4], [1, 7],
    # [2, 14]: every fake is inside (−2 on the edge of 0's ball) → precision 1.
    # Fake radii: −2: {2.5, 5, 14, 15} → 5; 0.5: {2.5, 2.5, 11.5, 12.5} → 2.5;
    # 3: {5, 2.5, 9, 10} → 5; 12: {14, 11.5, 9, 1} → 9; 13: {15, 12.5, 10, 1} → 10.
    # Balls [−7, 3], [−2, 3], [−2, 8], [3, 21], [3, 23] cover every real → recall 1.
    pr = precision_recall(REAL, FAKE, k=2)
    assert (pr.precision, pr.recall) == (1.0, 1.0)
    radii = knn_squared_radii(torch.as_tensor(REAL), 2, batch_size=2).sqrt()
    assert radii.tolist() == [2.0, 1.0, 2.0, 3.0, 6.0]


def test_identical_sets_give_one_and_one() -> None:
    x = np.random.default_rng(0).standard_normal((200, 16))
    pr = precision_recall(x, x.copy(), k=3)
    assert (pr.precision, pr.recall) == (1.0, 1.0)


def test_well_separated_clusters_give_zero_and_zero() -> None:
    rng = np.random.default_rng(1)
    real = rng.standard_normal((150, 8))
    fake = 100.0 + rng.standard_normal((120, 8))
    pr = precision_recall(real, fake)
    assert (pr.precision, pr.recall, pr.num_real, pr.num_fake, pr.k) == (0.0, 0.0, 150, 120, 3)


def test_swapping_the_sets_swaps_precision_and_recall() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((90, 4)), 0.7 + 1.5 * rng.standard_normal((70, 4))
    ab, ba = precision_recall(a, b), precision_recall(b, a)
    assert (ab.precision, ab.recall) == (ba.recall, ba.precision)
    assert 0.0 < ab.precision < 1.0 and 0.0 < ab.recall < 1.0


def _brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    """Direct definition: full distance matrices by differences, sorted neighbour lists."""

    def radii(x: np.ndarray) -> np.ndarray:
        d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        return np.sort(d, axis=1)[:, k - 1]

    def inside(q: np.ndarray, ref: np.ndarray) -> float:
        d = np.sqrt(((q[:, None, :] - ref[None, :, :]) ** 2).sum(-1))
        return float((d <= radii(ref)[None, :]).any(axis=1).mean())

    return inside(fake, real), inside(real, fake)


@pytest.mark.parametrize("batch_size", [3, 7, 64, 4096])
def test_blocks_do_not_change_the_result_and_match_brute_force(batch_size: int) -> None:
    rng = np.random.default_rng(3)
    real = rng.standard_normal((130, 5))
    fake = 0.4 + 1.2 * rng.standard_normal((110, 5))
    pr = precision_recall(real, fake, k=3, batch_size=batch_size)
    assert (pr.precision, pr.recall) == _brute_force(real, fake, 3)
    ref = knn_squared_radii(torch.as_tensor(real), 3, batch_size=4096)
    got = knn_squared_radii(torch.as_tensor(real), 3, batch_size=batch_size)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)


def test_duplicates_count_as_neighbours_but_a_point_is_not_its_own() -> None:
    # Three copies of 0 and one point at 5: with k = 2, each copy's 2 nearest others are the
    # other two copies (radius 0); the point at 5 has radius 5. Distinct points never get
    # radius 0 from their own distance: {0, 1, 3} with k = 1 has radii 1, 1, 2.
    x = torch.tensor([[0.0], [0.0], [0.0], [5.0]], dtype=torch.float64)
    assert knn_squared_radii(x, 2, batch_size=3).tolist() == [0.0, 0.0, 0.0, 25.0]
    y = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    assert knn_squared_radii(y, 1, batch_size=2).tolist() == [1.0, 1.0, 4.0]


def test_torch_and_float32_inputs_are_accepted() -> None:
    pr = precision_recall(torch.tensor(REAL, dtype=torch.float32), torch.tensor(FAKE), k=1)
    assert (pr.precision, pr.recall) == (0.6, 0.8)


@pytest.mark.parametrize(
    "real, fake, kwargs, message",
    [
        (np.zeros((3, 2)), np.zeros((10, 2)), {}, "k = 3 needs more than 3 real and fake"),
        (np.zeros((10, 2)), np.zeros((3, 2)), {}, "got 10 real and 3 fake"),
        (np.zeros((10, 2)), np.zeros((10, 3)), {}, "real features have 2 dimensions but fake"),
        (np.zeros((0, 2)), np.zeros((10, 2)), {}, "real features must be a non-empty [N, D]"),
        (np.zeros((10, 2)), np.zeros(10), {}, "fake features must be a non-empty [N, D]"),
        (np.zeros((10, 0)), np.zeros((10, 0)), {}, "got shape (10, 0)"),
        (np.full((10, 2), np.nan), np.zeros((10, 2)), {}, "contain NaN or inf"),
        (np.zeros((10, 2)), np.zeros((10, 2)), {"k": 0}, "k must be an integer >= 1"),
        (np.zeros((10, 2)), np.zeros((10, 2)), {"k": 2.5}, "k must be an integer >= 1"),
        (np.zeros((10, 2)), np.zeros((10, 2)), {"batch_size": 0}, "batch_size must be"),
    ],
)
def test_bad_input_raises_one_line_errors(real, fake, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        precision_recall(real, fake, **kwargs)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_weighted_replicates_reweight_membership_with_fixed_radii() -> None:
    from iddpm.eval.precision_recall import (
        _squared_distances,
        knn_squared_radii,
        weighted_precision_recall,
    )

    rng = np.random.default_rng(5)
    real = torch.as_tensor(rng.standard_normal((60, 3)))
    fake = torch.as_tensor(rng.standard_normal((50, 3)) + 0.4)
    w = np.ones((50, 2))
    w[:25, 1] = 0.0
    w[25:, 1] = 2.0
    precision, recall = weighted_precision_recall(real, fake, w, k=3, batch_size=16)
    pr = precision_recall(real, fake, k=3)
    assert (precision[0], recall[0]) == (pr.precision, pr.recall)
    # replicate 1 by hand: fake rows 25.. only, radii of the full sets
    real_r, fake_r = knn_squared_radii(real, 3, 64), knn_squared_radii(fake, 3, 64)
    inside_real = (_squared_distances(fake, real) <= real_r[None]).any(1).numpy()
    assert precision[1] == pytest.approx(inside_real[25:].mean())
    covered = (_squared_distances(real, fake[25:]) <= fake_r[25:][None]).any(1).numpy()
    assert recall[1] == pytest.approx(covered.mean())
