"""FID: the Fréchet distance against closed forms; streaming statistics against one-shot ones."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from iddpm.eval import fid
from iddpm.eval.fid import (
    FeatureExtractor,
    FeatureStats,
    fid_from_stats,
    frechet_distance,
)
from iddpm.workflows.quality import image_features


def _random_spd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / (rank or d) + (0.0 if rank else 0.1) * np.eye(d)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _reference_fid(mu1, s1, mu2, s2) -> float:
    """Independent route: tr (Σ₁Σ₂)^{1/2} = Σ √λ(Σ₁^{1/2} Σ₂ Σ₁^{1/2}), a symmetric PSD matrix."""
    r1 = _sqrt_psd(s1)
    lam = np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(lam).sum())


# --- the Fréchet distance -------------------------------------------------------------------


def test_identical_statistics_give_zero() -> None:
    rng = np.random.default_rng(0)
    stats = FeatureStats(dim=16).add(rng.standard_normal((500, 16)) @ rng.standard_normal((16, 16)))
    assert abs(fid_from_stats(stats, stats)) < 1e-6


def test_diagonal_covariances_match_elementwise_closed_form() -> None:
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    a, b = rng.uniform(0.1, 3.0, 10), rng.uniform(0.1, 3.0, 10)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_commuting_covariances_match_shared_eigenbasis_closed_form() -> None:
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    a, b = rng.uniform(0.1, 2.0, 12), rng.uniform(0.1, 2.0, 12)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu = rng.standard_normal(12)
    expected = np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("d", [2, 8, 64])
def test_non_commuting_covariances_match_eigendecomposition_reference(d: int) -> None:
    rng = np.random.default_rng(d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    assert not np.allclose(s1 @ s2, s2 @ s1)  # the case where √ is not elementwise
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = _reference_fid(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_distance_is_symmetric_and_positive() -> None:
    rng = np.random.default_rng(3)
    s1, s2 = _random_spd(rng, 6), _random_spd(rng, 6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    ab, ba = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert ab > 0 and ab == pytest.approx(ba, rel=1e-9)


def test_rank_deficient_covariances_stay_finite_and_close_to_reference() -> None:
    rng = np.random.default_rng(4)
    s1, s2 = _random_spd(rng, 16, rank=3), _random_spd(rng, 16, rank=5)
    mu = np.zeros(16)
    got = frechet_distance(mu, s1, mu, s2)
    assert np.isfinite(got)
    assert got == pytest.approx(_reference_fid(mu, s1, mu, s2), abs=1e-4)


def test_non_finite_sqrtm_falls_back_to_eps_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    s1, s2 = _random_spd(rng, 5), _random_spd(rng, 5)
    calls: list[np.ndarray] = []
    real_sqrtm = scipy.linalg.sqrtm

    def flaky_sqrtm(a: np.ndarray) -> np.ndarray:
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(fid.scipy.linalg, "sqrtm", flaky_sqrtm)
    got = frechet_distance(np.zeros(5), s1, np.zeros(5), s2)
    eps = np.eye(5) * fid.SQRTM_EPS
    np.testing.assert_allclose(calls[1], (s1 + eps) @ (s2 + eps))
    assert got == pytest.approx(_reference_fid(np.zeros(5), s1, np.zeros(5), s2), abs=1e-4)


def test_non_psd_sigma_raises_on_large_imaginary_part() -> None:
    with pytest.raises(ValueError, match="not positive semi-definite"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))


def test_mismatched_shapes_raise() -> None:
    with pytest.raises(ValueError, match="shapes disagree"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# --- streaming statistics -------------------------------------------------------------------


def _features(n: int = 1000, d: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 5.0 * rng.standard_normal(d)


def test_mean_and_unbiased_cov_match_numpy() -> None:
    x = _features()
    stats = FeatureStats(dim=12).add(x)
    np.testing.assert_allclose(stats.mean(), x.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.cov(), np.cov(x, rowvar=False, ddof=1), rtol=1e-9, atol=1e-9)
    assert stats.count == 1000 and stats.feature_sum.dtype == np.float64


def test_many_small_batches_and_merged_shards_equal_one_shot() -> None:
    x = _features()
    one_shot = FeatureStats(dim=12).add(x)
    rng = np.random.default_rng(1)
    cuts = np.sort(rng.choice(np.arange(1, 1000), size=60, replace=False))
    batches = np.split(x, cuts)
    streamed = FeatureStats(dim=12)
    for b in batches:
        streamed.add(b)
    shards = [FeatureStats(dim=12).add(np.concatenate(batches[i::3])) for i in range(3)]
    merged = shards[0] + shards[1] + shards[2]
    for s in (streamed, merged):
        assert s.count == one_shot.count
        np.testing.assert_allclose(s.feature_sum, one_shot.feature_sum, rtol=1e-12)
        np.testing.assert_allclose(s.outer_sum, one_shot.outer_sum, rtol=1e-12)
        np.testing.assert_allclose(s.cov(), one_shot.cov(), rtol=1e-9, atol=1e-9)


def test_merge_returns_new_object_and_leaves_inputs_alone() -> None:
    a, b = FeatureStats(dim=3).add(np.ones((2, 3))), FeatureStats(dim=3).add(np.zeros((2, 3)))
    c = a.merge(b)
    assert c is not a and a.count == 2 and b.count == 2 and c.count == 4
    np.testing.assert_allclose(c.mean(), np.full(3, 0.5))


def test_all_reduce_is_identity_in_one_process() -> None:
    pytest.importorskip("iddpm.distributed")
    stats = FeatureStats(dim=4, extractor="x").add(_features(50, 4))
    total = stats.all_reduce()
    assert total.count == 50 and total.extractor == "x"
    np.testing.assert_array_equal(total.outer_sum, stats.outer_sum)


def _sharded_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    from iddpm import distributed

    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    distributed.init(timeout_s=60)
    try:
        ex = _LinearExtractor(16)
        _, stats = image_features(ex, _images(103, 0), batch_size=10)
        stats.save(f"{out_dir}/rank{rank}.npz")
    finally:
        distributed.shutdown()


@pytest.mark.slow
def test_two_rank_sharded_stats_equal_single_process_stats(tmp_path) -> None:
    pytest.importorskip("iddpm.distributed")
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sharded_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ex = _LinearExtractor(16)
    expected = FeatureStats(dim=ex.dim).add(ex(_images(103, 0)))
    for r in range(2):
        got = FeatureStats.load(tmp_path / f"rank{r}.npz")
        assert got.count == 103
        np.testing.assert_allclose(got.outer_sum, expected.outer_sum, rtol=1e-12)


def test_bad_features_and_too_few_samples_raise() -> None:
    stats = FeatureStats(dim=3)
    with pytest.raises(ValueError, match=r"features must be \[N, 3\]"):
        stats.add(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="NaN or inf"):
        stats.add(np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="no features were added"):
        stats.mean()
    stats.add(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        stats.cov()


def test_stats_from_different_extractors_refuse_to_compare() -> None:
    x = _features(20, 3)
    a = FeatureStats(dim=3, extractor="digits-fid").add(x)
    b = FeatureStats(dim=3, extractor="inception-fid").add(x)
    with pytest.raises(ValueError, match="different extractors"):
        fid_from_stats(a, b)
    with pytest.raises(ValueError, match="feature dimensions differ"):
        a.merge(FeatureStats(dim=4))


# --- save / load ----------------------------------------------------------------------------


def test_save_load_round_trip_is_exact(tmp_path) -> None:
    stats = FeatureStats(dim=12, extractor="digits-fid").add(_features())
    path = stats.save(tmp_path / "sub" / "ref.npz")
    assert path == tmp_path / "sub" / "ref.npz" and path.is_file()
    back = FeatureStats.load(path)
    assert back.count == stats.count and back.extractor == "digits-fid"
    np.testing.assert_array_equal(back.outer_sum, stats.outer_sum)
    back.add(_features(5, 12))  # full sums stay extendable


def test_load_accepts_mu_sigma_reference_layout(tmp_path) -> None:
    x = _features()
    stats = FeatureStats(dim=12).add(x)
    np.savez(tmp_path / "ref.npz", mu=stats.mean(), sigma=stats.cov())
    ref = FeatureStats.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(ref.cov(), stats.cov())
    assert abs(fid_from_stats(stats, ref)) < 1e-6
    with pytest.raises(ValueError, match="loaded from mu/sigma only"):
        ref.add(x)
    saved_again = FeatureStats.load(ref.save(tmp_path / "again.npz"))
    np.testing.assert_array_equal(saved_again.mean(), stats.mean())


def test_load_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FeatureStats.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", images=np.zeros(3))
    with pytest.raises(ValueError, match="expected mu and sigma"):
        FeatureStats.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=r"mu must be \[D\]"):
        FeatureStats.from_moments(np.zeros(3), np.eye(4))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"feature_sum": np.zeros(4), "outer_sum": np.eye(3), "count": 5}, "outer_sum"),
        ({"feature_sum": np.zeros((4, 2)), "outer_sum": np.eye(4), "count": 5}, "feature_sum"),
        ({"feature_sum": np.zeros(4), "outer_sum": np.eye(4), "count": 2.5}, "count"),
        ({"mu": np.zeros(4), "sigma": np.eye(3)}, "sigma"),
        ({"mu": np.full(4, np.nan), "sigma": np.eye(4)}, "NaN"),
        ({"mu": np.zeros(4), "sigma": np.full((4, 4), np.inf)}, "NaN"),
        ({"feature_sum": np.full(4, np.nan), "outer_sum": np.eye(4), "count": 5}, "NaN"),
    ],
)
def test_malformed_statistics_files_raise_one_line_value_errors(tmp_path, arrays, message):
    """The fid bad-input campaign: wrong shapes ended in an AssertionError and NaN moments
    gave `"fid": null` with exit 0; both are ValueErrors naming the file now."""
    np.savez(tmp_path / "ref.npz", **arrays)
    with pytest.raises(ValueError, match=message) as err:
        FeatureStats.load(tmp_path / "ref.npz")
    assert "ref.npz" in str(err.value) and "\n" not in str(err.value)


def test_non_finite_distance_is_refused() -> None:
    with pytest.raises(ValueError, match="not finite"):
        frechet_distance(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1))


# --- from images ----------------------------------------------------------------------------


class _LinearExtractor:
    """Deterministic stand-in: a fixed random projection of the pixels."""

    name = "linear-test"
    comparable_to_inception = False

    def __init__(self, pixels: int, dim: int = 6) -> None:
        self.dim = dim
        self.w = np.random.default_rng(0).standard_normal((pixels, dim))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        assert images.dtype == np.uint8
        return images.reshape(len(images), -1).astype(np.float64) @ self.w


def _images(n: int, seed: int, shift: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.integers(0, 200, (n, 4, 4, 1)) + shift, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_image_features_do_not_depend_on_batching(batch_size: int) -> None:
    ex = _LinearExtractor(16)
    images = _images(100, 0)
    assert isinstance(ex, FeatureExtractor)
    expected = FeatureStats(dim=6).add(ex(images))
    features, got = image_features(ex, images, batch_size=batch_size)
    assert got.count == 100 and got.extractor == "linear-test" and features.shape == (100, 6)
    np.testing.assert_allclose(got.outer_sum, expected.outer_sum, rtol=1e-12)


def test_fid_is_zero_for_the_same_set_and_grows_with_shift() -> None:
    ex = _LinearExtractor(16)

    def stats(shift: int) -> FeatureStats:
        return image_features(ex, _images(200, 0, shift=shift), batch_size=64)[1]

    assert abs(fid_from_stats(stats(0), stats(0))) < 1e-6
    near, far = fid_from_stats(stats(5), stats(0)), fid_from_stats(stats(40), stats(0))
    assert 0 < near < far
