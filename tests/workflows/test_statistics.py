"""Statistics estimated from data (Analytic-DPM's Γ) are cached per checkpoint, weights and
spacing, reused, and a cached file that is damaged or belongs to another entry is
estimated again and replaced (a cache is never an error)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from conftest import save_random_run, tiny_experiment
from iddpm.build import load_model
from iddpm.config import SampleConfig
from iddpm.workflows.cache import _file_digest, checkpoint_digest
from iddpm.workflows.context import JobContext, StatsConfig
from iddpm.workflows.plan import SamplingPlan
from iddpm.workflows.statistics import reverse_variance

CTX = JobContext(stats=StatsConfig(num_images=100))


def _cache_files(run: Path) -> list[Path]:
    return sorted((run / "cache" / "statistics").glob("*.json"))


def _gamma(loaded, steps: str, ctx: JobContext = CTX) -> tuple[float, ...]:
    return SamplingPlan(
        loaded, SampleConfig(steps=steps, sampler="analytic"), ctx
    ).options.eps_moments


@pytest.fixture
def run(tmp_path: Path) -> Path:
    save_random_run(tmp_path / "run", tiny_experiment())
    return tmp_path / "run"


def test_gamma_is_estimated_once_per_spacing_and_reused(run: Path) -> None:
    loaded = load_model(run)
    first = _gamma(loaded, "5")
    assert len(first) == 5 and all(g > 0 for g in first)
    (path,) = _cache_files(run)
    stamp = path.stat().st_mtime_ns
    assert _gamma(loaded, "5") == first and path.stat().st_mtime_ns == stamp  # read back
    assert len(_gamma(loaded, "10")) == 10 and len(_cache_files(run)) == 2
    raw = load_model(run, use_ema=False)  # other weights, other statistics
    _gamma(raw, "5")
    assert len(_cache_files(run)) == 3


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: {**s, "values": {"eps_moments": s["values"]}},  # a dict where a list belongs
        lambda s: {**s, "values": s["values"][:-1]},  # a table of another length
        lambda s: {**s, "meta": {**s["meta"], "checkpoint_sha256": "0" * 64}},  # another's
    ],
)
def test_a_damaged_cache_is_estimated_again_and_replaced(run: Path, damage) -> None:
    loaded = load_model(run)
    first = _gamma(loaded, "5")
    (path,) = _cache_files(run)
    path.write_text(json.dumps(damage(json.loads(path.read_text()))))
    assert _gamma(loaded, "5") == first
    assert json.loads(path.read_text())["values"] == list(first)  # repaired


def test_an_unreadable_cache_is_estimated_again(run: Path) -> None:
    loaded = load_model(run)
    first = _gamma(loaded, "5")
    (path,) = _cache_files(run)
    path.write_bytes(b"\x00{not json")
    assert _gamma(loaded, "5") == first


def test_a_run_that_cannot_keep_a_cache_is_used_without_one(run: Path) -> None:
    loaded = load_model(run)
    (run / "cache").write_text("")  # no folder can be made there (as on a read-only run)
    assert len(_gamma(loaded, "5")) == 5
    assert (run / "cache").read_text() == ""


def test_too_few_images_are_refused() -> None:
    with pytest.raises(ValueError, match="--stats-images 5 is too few"):
        StatsConfig(num_images=5)


def test_reverse_variance_tables(run: Path) -> None:
    loaded = load_model(run)
    assert reverse_variance(loaded, "5", "model", CTX) is None
    small = reverse_variance(loaded, "5", "fixed-small", CTX)
    large = reverse_variance(loaded, "5", "fixed-large", CTX)
    analytic = reverse_variance(loaded, "5", "analytic", CTX)
    assert small.shape == large.shape == analytic.shape == (5,)
    assert bool((small[1:] <= large[1:]).all())  # β̃ ≤ β at every jump
    # Analytic-DPM lies between the two fixed choices (Bao et al., Theorem 2), decoder aside
    assert bool((analytic[1:] >= small[1:] * (1 - 1e-12)).all())
    assert bool(torch.isfinite(analytic).all())
    # the bound's Γ is the sampler's: one statistic, one cache entry
    assert len(_cache_files(run)) == 1


def test_a_checkpoint_is_hashed_once_until_it_changes(tmp_path: Path) -> None:
    f = tmp_path / "step.pt"
    f.write_bytes(b"a" * 1000)
    first = checkpoint_digest(f)
    misses = _file_digest.cache_info().misses
    assert checkpoint_digest(f) == first == hashlib.sha256(b"a" * 1000).hexdigest()
    assert _file_digest.cache_info().misses == misses  # read from the cache, not the file
    f.write_bytes(b"b" * 1001)
    assert checkpoint_digest(f) == hashlib.sha256(b"b" * 1001).hexdigest()
