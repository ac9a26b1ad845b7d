"""Feature extractors: the shipped digits classifier is accurate and its FID orders image sets
sensibly; training is deterministic; the Inception adapter fails with instructions offline."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from iddpm.data.bundled import load_digits
from iddpm.eval import features
from iddpm.eval.features import (
    DigitsFeatureExtractor,
    InceptionFeatureExtractor,
    classifier_confidence,
    get_extractor,
    load_digits_classifier,
    save_digits_classifier,
    train_digits_classifier,
)
from iddpm.eval.fid import FeatureExtractor, fid_from_stats
from iddpm.workflows.quality import image_features


@pytest.fixture(scope="module")
def digits() -> tuple:
    return load_digits("train"), load_digits("test")


@pytest.fixture(scope="module")
def extractor() -> DigitsFeatureExtractor:
    return DigitsFeatureExtractor()


# --- the shipped digits classifier ----------------------------------------------------------


def test_shipped_classifier_is_accurate_on_the_test_split(digits, extractor) -> None:
    _, test = digits
    probs = extractor.predict_proba(test.images)
    assert probs.shape == (len(test.images), 10) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs.argmax(axis=1) == test.labels).mean() >= 0.95


def test_digits_features_follow_the_extractor_protocol(digits, extractor) -> None:
    _, test = digits
    assert isinstance(extractor, FeatureExtractor)
    assert extractor.name == "digits-fid" and not extractor.comparable_to_inception
    f = extractor(test.images)
    assert f.shape == (len(test.images), extractor.dim) and f.dtype == np.float64
    assert np.isfinite(f).all()
    assert np.linalg.matrix_rank(np.cov(f, rowvar=False)) == extractor.dim  # no dead units
    assert extractor(test.images[:0]).shape == (0, extractor.dim)


def test_digits_features_do_not_depend_on_batch_size(digits) -> None:
    images = digits[1].images[:40]
    small = DigitsFeatureExtractor(batch_size=7)
    np.testing.assert_allclose(small(images), DigitsFeatureExtractor()(images), atol=1e-4)


def test_digits_fid_orders_real_degraded_and_random_images(digits, extractor) -> None:
    train, test = digits
    rng = np.random.default_rng(0)
    noisy = np.clip(test.images + rng.normal(0, 40, test.images.shape), 0, 255).astype(np.uint8)
    random = rng.integers(0, 256, test.images.shape, dtype=np.uint8)
    missing_classes = test.images[test.labels < 5]
    ref = image_features(extractor, train.images)[1]
    fid = {
        name: fid_from_stats(image_features(extractor, imgs)[1], ref)
        for name, imgs in [
            ("test", test.images),
            ("noisy", noisy),
            ("half the classes", missing_classes),
            ("random", random),
        ]
    }
    assert abs(fid_from_stats(ref, ref)) < 1e-6
    assert fid["test"] < fid["noisy"] < fid["random"]
    assert fid["test"] < fid["half the classes"]


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 8, 8, 1), np.float32), "uint8 numpy array"),
        (np.zeros((2, 32, 32, 3), np.uint8), "use the inception extractor"),
        (np.zeros((8, 8), np.uint8), r"\[N, 8, 8, 1\]"),
    ],
)
def test_digits_extractor_rejects_other_images(extractor, images, message) -> None:
    with pytest.raises(ValueError, match=message):
        extractor(images)


def test_missing_weights_file_names_the_regeneration_script(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"make_digits_classifier\.py"):
        DigitsFeatureExtractor(weights_path=tmp_path / "none.safetensors")


# --- training -------------------------------------------------------------------------------


def _subset(digits, n: int = 200):
    train, _ = digits
    return train.images[:n], train.labels[:n]


@pytest.mark.slow
def test_training_is_deterministic_and_leaves_global_state_alone(digits) -> None:
    images, labels = _subset(digits)
    rng_before, threads = torch.get_rng_state(), torch.get_num_threads()
    a = train_digits_classifier(images, labels, seed=3, epochs=1)
    b = train_digits_classifier(images, labels, seed=3, epochs=1)
    c = train_digits_classifier(images, labels, seed=4, epochs=1)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert not torch.equal(a.fc2.weight, c.fc2.weight)


@pytest.mark.slow
def test_save_load_round_trip_reproduces_outputs(digits, tmp_path: Path) -> None:
    images, labels = _subset(digits)
    model = train_digits_classifier(images, labels, epochs=1)
    path = save_digits_classifier(model, tmp_path / "w.safetensors", {"seed": "0"})
    ex = DigitsFeatureExtractor(weights_path=path)
    with torch.no_grad():
        expected = model.features(features.digits_to_input(images)).double().numpy()
    np.testing.assert_array_equal(ex(images), expected)
    assert not any(p.requires_grad for p in load_digits_classifier(path).parameters())


def test_training_rejects_bad_labels(digits) -> None:
    images, labels = _subset(digits, 10)
    with pytest.raises(ValueError, match=r"labels must be \[N\] ints in 0..9"):
        train_digits_classifier(images, labels[:5], epochs=1)
    with pytest.raises(ValueError, match=r"labels must be \[N\] ints in 0..9"):
        train_digits_classifier(images, labels + 10, epochs=1)


# --- classifier confidence ------------------------------------------------------------------


def test_confidence_of_balanced_one_hot_predictions() -> None:
    probs = np.eye(10)[np.arange(100) % 10]
    got = classifier_confidence(probs)
    assert got["confident_fraction"] == 1.0 and got["mean_max_prob"] == 1.0
    assert got["class_entropy_bits"] == pytest.approx(np.log2(10))
    assert got["classifier_score"] == pytest.approx(10.0)  # exp(KL(one-hot ‖ uniform))


def test_confidence_of_uninformative_predictions() -> None:
    got = classifier_confidence(np.full((50, 10), 0.1))
    assert got["confident_fraction"] == 0.0
    assert got["mean_max_prob"] == pytest.approx(0.1)
    assert got["classifier_score"] == pytest.approx(1.0)


def test_confidence_threshold_and_collapse() -> None:
    probs = np.array([[0.95, 0.05], [0.85, 0.15], [0.9, 0.1]])
    got = classifier_confidence(probs, threshold=0.9)
    assert got["confident_fraction"] == pytest.approx(2 / 3)
    assert got["class_entropy_bits"] == 0.0  # every sample predicted as class 0
    with pytest.raises(ValueError, match="rows summing to 1"):
        classifier_confidence(np.ones((2, 3)))


# --- choosing an extractor ------------------------------------------------------------------


def test_get_extractor_by_name() -> None:
    assert isinstance(get_extractor("digits"), DigitsFeatureExtractor)
    with pytest.raises(ValueError, match="choose one of: digits, inception"):
        get_extractor("clip")


# --- Inception: the adapter, with torch-fidelity stubbed or absent --------------------------


def test_inception_weights_live_in_torch_hub_checkpoints(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert features.inception_weights_path() == expected


class _FailingImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `import torch_fidelity` raise `error`, as a broken install would."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def find_spec(self, name, path=None, target=None):
        if name == "torch_fidelity":
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise self.error


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (None, r"pip install 'iddpm\[fid\]'"),
        (ModuleNotFoundError("No module named 'torchvision'", name="torchvision"), "torchvision"),
        (RuntimeError("operator torchvision::nms does not exist"), "reinstall torchvision"),
    ],
)
def test_inception_import_failure_says_what_to_install(monkeypatch, error, message) -> None:
    monkeypatch.delitem(sys.modules, "torch_fidelity", raising=False)
    if error is None:
        monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # "not installed"
    else:
        monkeypatch.setattr(sys, "meta_path", [_FailingImport(error), *sys.meta_path])
    with pytest.raises(ImportError, match=message) as info:
        InceptionFeatureExtractor()
    assert "\n" not in str(info.value)


class _StubInception(nn.Module):
    """Records what the adapter passes in; returns features like torch-fidelity does."""

    seen: ClassVar[list[torch.Tensor]] = []

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__()
        assert features_list == ["2048"] and Path(feature_extractor_weights_path).is_file()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        self.seen.append(x)
        return (x.float().mean(dim=(1, 2, 3))[:, None].expand(-1, 2048),)


@pytest.fixture
def stub_fidelity(monkeypatch):
    module = type(sys)("torch_fidelity")
    module.FeatureExtractorInceptionV3 = _StubInception
    monkeypatch.setitem(sys.modules, "torch_fidelity", module)
    _StubInception.seen.clear()
    return module


def test_inception_missing_weights_say_which_file_goes_where(stub_fidelity, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"weights-inception-2015-12-05-6726825d\.pth"):
        InceptionFeatureExtractor(weights_path=tmp_path / "nope.pth")


def test_inception_weights_must_be_a_plain_state_dict(stub_fidelity, tmp_path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(1), "extra": Path("x")}, path)  # a pickled non-tensor object
    with pytest.raises(ValueError, match="not a plain tensor state dict"):
        InceptionFeatureExtractor(weights_path=path)


def test_inception_adapter_feeds_uint8_rgb_and_returns_float64(stub_fidelity, tmp_path) -> None:
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(1)}, path)
    ex = InceptionFeatureExtractor(weights_path=path, device="cpu", batch_size=3)
    assert ex.comparable_to_inception and ex.dim == 2048
    images = np.arange(7 * 8 * 8, dtype=np.uint8).reshape(7, 8, 8, 1)
    f = ex(images)
    assert f.shape == (7, 2048) and f.dtype == np.float64
    seen = _StubInception.seen
    assert [x.shape for x in seen] == [(3, 3, 8, 8), (3, 3, 8, 8), (1, 3, 8, 8)]
    assert all(x.dtype == torch.uint8 for x in seen)
    np.testing.assert_array_equal(seen[0][:, 1].numpy(), images[:3, ..., 0])  # grey → RGB
    with pytest.raises(ValueError, match="C in"):
        ex(np.zeros((2, 8, 8, 2), np.uint8))


# --- Inception: the real network, only where torch-fidelity and its weights are present -----


def test_real_inception_features_when_available(digits) -> None:
    try:
        ex = InceptionFeatureExtractor(batch_size=32)
    except (ImportError, FileNotFoundError) as err:
        pytest.skip(str(err))
    _, test = digits
    images = test.images[:64]
    f = ex(images)
    assert f.shape == (64, 2048) and np.isfinite(f).all()
    stats = image_features(ex, images, batch_size=32)[1]
    assert abs(fid_from_stats(stats, stats)) < 1e-6


def test_read_only_images_give_the_same_features_without_a_warning(digits, extractor) -> None:
    """A memory-mapped prepared data set is read-only; torch warns when wrapping such an
    array, so the extractor copies it first (the fid bad-input campaign's stray warning)."""
    images = np.array(digits[0].images[:16])
    frozen = images.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = extractor(frozen)
    np.testing.assert_array_equal(got, extractor(images))


class _StubInceptionFull(nn.Module):
    """torch-fidelity's network as `extract` uses it: a Mixed_6e block whose output the
    adapter hooks, and (pool, logits) outputs for features ["2048", "logits_unbiased"]."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__()
        assert features_list == ["2048", "logits_unbiased"]
        self.Mixed_6e = nn.Identity()

    def forward(self, x: torch.Tensor):
        mean = x.float().mean(dim=(1, 2, 3))[:, None, None, None]
        maps = self.Mixed_6e(mean.expand(-1, 768, 17, 17))
        pool = maps.mean(dim=(2, 3))[:, :1].expand(-1, 2048)
        return pool, pool[:, :1].expand(-1, 1008)


def test_inception_extract_hooks_spatial_maps_and_returns_logits(monkeypatch, tmp_path) -> None:
    module = type(sys)("torch_fidelity")
    module.FeatureExtractorInceptionV3 = lambda name, fl, **kw: (
        _StubInception(name, ["2048"], **kw)
        if fl == ["2048"]
        else _StubInceptionFull(name, fl, **kw)
    )
    monkeypatch.setitem(sys.modules, "torch_fidelity", module)
    path = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(1)}, path)
    ex = InceptionFeatureExtractor(weights_path=path, device="cpu", batch_size=2)
    images = np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3)
    got = ex.extract(images)
    assert got.pool.shape == (3, 2048) and got.logits.shape == (3, 1008)
    assert got.spatial.shape == (3, ex.spatial_dim) == (3, 7 * 17 * 17)
    np.testing.assert_allclose(got.spatial[:, 0], images.reshape(3, -1).mean(1))
    assert not ex._full.Mixed_6e._forward_hooks  # the hook is removed after the pass
