"""The streaming scorer: order and sharding do not change a bit, it agrees with the
one-shot metrics, and every digits metric runs offline."""

from __future__ import annotations

import numpy as np
import pytest

from iddpm.data.bundled import load_digits
from iddpm.eval.features import DigitsFeatureExtractor, classifier_confidence
from iddpm.eval.fid import FeatureStats, fid_from_stats
from iddpm.eval.inception_score import inception_score
from iddpm.eval.kid import kid
from iddpm.eval.precision_recall import precision_recall
from iddpm.eval.scorer import ReferenceFeatures, SampleScorer, ScoreOptions


@pytest.fixture(scope="module")
def setup():
    ex = DigitsFeatureExtractor()
    train, test = load_digits("train").images, load_digits("test").images[:200]
    ref = SampleScorer(ex, len(train), ScoreOptions(keep=400))
    ref.add(train, 0)
    reference = ReferenceFeatures(ref.stats(), ref.spatial_stats(), ref.rows)
    return ex, train, test, reference


def _scored(ex, images, options, order):
    s = SampleScorer(ex, len(images), options)
    for lo, hi in order:
        s.add(images[lo:hi], lo)
    return s


def test_digits_metrics_match_the_one_shot_formulas(setup) -> None:
    ex, _, test, ref = setup
    opts = ScoreOptions(kid_subsets=5, kid_subset_size=100, splits=4)
    got = _scored(ex, test, opts, [(0, 200)]).result(ref)
    e = ex.extract(test)
    assert got["fid"] == pytest.approx(
        fid_from_stats(FeatureStats(dim=64).add(e.pool), ref.stats), rel=1e-9
    )
    assert got["sfid"] > 0 and got["num_samples"] == 200
    assert got["inception_score"] == pytest.approx(inception_score(e.logits, 4)[0], rel=1e-9)
    pr = precision_recall(ref.rows, e.pool, k=3)
    assert (got["precision"], got["recall"]) == (pr.precision, pr.recall)
    k_mean, k_std = kid(ref.rows, e.pool, subsets=5, subset_size=100)
    assert (got["kid"], got["kid_std"]) == pytest.approx((k_mean, k_std), rel=1e-9)
    conf = classifier_confidence(ex.predict_proba(test))
    assert got["confident_fraction"] == conf["confident_fraction"]
    # predict_proba takes the softmax in float32, the scorer in float64
    assert got["classifier_score"] == pytest.approx(conf["classifier_score"], rel=1e-6)


def test_order_and_shards_do_not_change_a_bit(setup) -> None:
    ex, _, test, ref = setup
    opts = ScoreOptions(replicates=3, kid_subsets=3, kid_subset_size=50)
    one = _scored(ex, test, opts, [(0, 100), (100, 200)])
    shards = [_scored(ex, test, opts, [r]) for r in [(100, 200), (0, 100)]]
    total = SampleScorer(ex, 200, opts)
    for s in shards[::-1]:  # summed in shard order, as the jobs do
        total.load_arrays(s.arrays())
    for key, value in one.arrays().items():
        np.testing.assert_array_equal(total.arrays()[key], value, err_msg=key)
    out = total.result(ref)
    assert set(out["intervals"]) == {"fid", "sfid", "inception_score", "kid", "precision", "recall"}
    assert all(i["low"] <= i["estimate"] <= i["high"] for i in out["intervals"].values())


def test_missing_or_repeated_samples_are_refused(setup) -> None:
    ex, _, test, ref = setup
    s = _scored(ex, test, ScoreOptions(), [(0, 150)])
    with pytest.raises(ValueError, match="exactly once"):
        s.result(ref)
    with pytest.raises(ValueError, match="outside"):
        s.add(test[:60], 150)
    with pytest.raises(ValueError, match="no samples"):
        SampleScorer(ex, 0, ScoreOptions())


def test_a_bootstrap_too_large_for_memory_is_refused() -> None:
    class Wide:
        name, dim, spatial_dim, comparable_to_inception = "inception-fid", 2048, 2023, True

    with pytest.raises(ValueError, match="--bootstrap"):
        SampleScorer(Wide(), 10, ScoreOptions(replicates=500))
