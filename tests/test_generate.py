"""Sampling to arrays: determinism per (seed, index), rank blocks, labels, the npz layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import save_random_run, tiny_experiment
from iddpm.build import load_model
from iddpm.config import SampleConfig
from iddpm.distributed import rank_block
from iddpm.generate import Samples, class_labels, save_npz
from iddpm.workflows.plan import SamplingPlan


def sample_images(loaded, request: SampleConfig) -> Samples:
    return SamplingPlan(loaded, request).draw_all()[0]


@pytest.mark.parametrize("ddim", [False, True])
def test_same_seed_same_samples_for_any_batch_size(random_run, ddim: bool) -> None:
    run, _ = random_run
    loaded = load_model(run)
    outs = []
    for batch in (1, 4, 16):
        opts = {"sampler": "ddim", "sampler_options": {"eta": 0.5}} if ddim else {}
        cfg = SampleConfig(num=6, steps="5", batch_size=batch, seed=3, **opts)
        outs.append(sample_images(loaded, cfg).images)
    assert outs[0].dtype == np.uint8 and outs[0].shape == (6, 8, 8, 1)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    other = sample_images(loaded, SampleConfig(num=6, steps="5", seed=4))
    assert not np.array_equal(outs[0], other.images)


def test_sample_i_does_not_depend_on_how_many_are_drawn(random_run) -> None:
    run, _ = random_run
    loaded = load_model(run)
    few = sample_images(loaded, SampleConfig(num=3, steps="4", seed=1))
    many = sample_images(loaded, SampleConfig(num=7, steps="4", seed=1))
    assert np.array_equal(few.images, many.images[:3])


def test_rank_blocks_partition_the_indices() -> None:
    for num in (1, 7, 64):
        for world in (1, 2, 3, 8):
            blocks = [list(rank_block(num, r, world)) for r in range(world)]
            assert [i for b in blocks for i in b] == list(range(num))


def test_class_labels_round_robin_or_fixed() -> None:
    assert class_labels(range(3, 8), 4, None).tolist() == [3, 0, 1, 2, 3]
    assert class_labels(range(3), 10, 7).tolist() == [7, 7, 7]
    assert class_labels(range(3), None, None) is None
    with pytest.raises(ValueError, match="not class-conditional"):
        class_labels(range(3), None, 2)
    with pytest.raises(ValueError, match=r"outside the model's classes 0\.\.9"):
        class_labels(range(3), 10, 10)


def test_class_conditional_samples_carry_labels(tmp_path) -> None:
    cfg = tiny_experiment(num_classes=3)
    save_random_run(tmp_path / "run", cfg)
    loaded = load_model(tmp_path / "run")
    s = sample_images(loaded, SampleConfig(num=5, steps="3"))
    assert s.labels.tolist() == [0, 1, 2, 0, 1]


def test_npz_layout(tmp_path) -> None:
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    path = save_npz(tmp_path / "s.npz", Samples(images, np.array([1, 2])))
    with np.load(path) as f:
        assert sorted(f.files) == ["arr_0", "arr_1"]
        assert np.array_equal(f["arr_0"], images) and f["arr_1"].tolist() == [1, 2]
    path = save_npz(tmp_path / "u.npz", Samples(images, None))
    with np.load(path) as f:
        assert f.files == ["arr_0"]


def test_learned_variance_model_samples_are_finite(random_run) -> None:
    run, _ = random_run
    loaded = load_model(run)
    torch.manual_seed(0)
    s = sample_images(loaded, SampleConfig(num=4, steps="", seed=0))
    assert s.images.shape == (4, 8, 8, 1)
