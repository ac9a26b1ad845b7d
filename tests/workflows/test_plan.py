"""The sampling plan: validated at construction (before any work), sample i depends only on
(seed, i) whichever indices a process draws, the model function is composed once with the
caller's transforms, and statistics come from the run cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import save_random_run, tiny_experiment
from iddpm.build import load_model
from iddpm.config import SampleConfig
from iddpm.workflows.context import JobContext, StatsConfig
from iddpm.workflows.plan import SamplingPlan


@pytest.fixture
def loaded(tmp_path: Path):
    save_random_run(tmp_path / "run", tiny_experiment())
    return load_model(tmp_path / "run")


@pytest.mark.parametrize("sampler", ["ancestral", "dpmpp2m-sde"])
def test_any_indices_give_the_same_samples_as_the_whole_set(loaded, sampler: str) -> None:
    plan = SamplingPlan(
        loaded, SampleConfig(num=7, steps="4", seed=2, batch_size=3, sampler=sampler)
    )
    whole, _ = plan.draw_all()
    part = plan.draw([6, 1, 4])  # another process of a sharded job, in any order
    assert np.array_equal(part.images, whole.images[[6, 1, 4]])
    assert not np.array_equal(whole.images[1], whole.images[4])


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (SampleConfig(steps="999"), "999"),
        (SampleConfig(sampler="euler"), "unknown sampler 'euler'"),
        (SampleConfig(sampler_options={"eta": 0.5}), "does not apply to sampler 'ancestral'"),
        (SampleConfig(class_label=3), "not class-conditional"),
    ],
)
def test_a_bad_request_fails_at_construction(loaded, request_, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingPlan(loaded, request_)


def test_transforms_wrap_the_respaced_model_function_once(loaded) -> None:
    seen: list[torch.Tensor] = []

    def record(fn):
        def wrapped(x, t, **kw):
            seen.append(t.clone())
            return fn(x, t, **kw)

        return wrapped

    req = SampleConfig(num=2, steps="4", batch_size=2)
    plain = SamplingPlan(loaded, req).draw_all()[0].images
    plan = SamplingPlan(loaded, req, transforms=[record])
    assert plan.model_fn is plan.model_fn  # composed once
    assert np.array_equal(plan.draw_all()[0].images, plain)  # an identity transform
    # the transform sees the respaced process's indices (3, 2, 1, 0), one call per step
    assert [int(t[0]) for t in seen] == [3, 2, 1, 0] and plan.calls == 4


def test_statistics_are_estimated_once_and_read_back(loaded, tmp_path: Path) -> None:
    ctx = JobContext(stats=StatsConfig(num_images=100))
    req = SampleConfig(num=2, steps="5", sampler="analytic")
    first = SamplingPlan(loaded, req, ctx)
    assert first._options is None  # nothing estimated before it is needed
    gamma = first.options.eps_moments
    assert len(gamma) == 5 and first.draw_all()[0].images.shape == (2, 8, 8, 1)
    (path,) = (tmp_path / "run" / "cache" / "statistics").glob("*.json")
    stamp = path.stat().st_mtime_ns
    assert SamplingPlan(loaded, req, ctx).options.eps_moments == gamma
    assert path.stat().st_mtime_ns == stamp
