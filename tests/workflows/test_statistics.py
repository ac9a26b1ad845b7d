"""Statistics estimated from data (Analytic-DPM's Γ) are cached per checkpoint and spacing,
reused, and a cached file that does not match is refused, never overwritten."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from conftest import save_random_run, tiny_experiment
from iddpm.build import load_model
from iddpm.config import SampleConfig
from iddpm.workflows.statistics import (
    StatsConfig,
    _file_digest,
    checkpoint_digest,
    reverse_variance,
    sampler_options,
)

STATS = StatsConfig(num_images=100)


def _cache_files(run: Path) -> list[Path]:
    return sorted((run / "cache" / "sampler_stats").glob("*.json"))


def test_gamma_is_estimated_once_per_spacing_and_reused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_random_run(run, tiny_experiment())
    loaded = load_model(run)
    cfg = SampleConfig(steps="5", sampler="analytic")
    first = sampler_options(loaded, cfg, "cpu", STATS)
    assert len(first.eps_moments) == 5 and all(g > 0 for g in first.eps_moments)
    (path,) = _cache_files(run)
    stamp = path.stat().st_mtime_ns
    again = sampler_options(loaded, cfg, "cpu", STATS)
    assert again == first and path.stat().st_mtime_ns == stamp  # read back, not recomputed
    other = sampler_options(loaded, cfg.replace(steps="10"), "cpu", STATS)
    assert len(other.eps_moments) == 10 and len(_cache_files(run)) == 2


def test_a_cached_file_of_another_checkpoint_is_refused_and_kept(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_random_run(run, tiny_experiment())
    loaded = load_model(run)
    cfg = SampleConfig(steps="5", sampler="analytic")
    sampler_options(loaded, cfg, "cpu", STATS)
    (path,) = _cache_files(run)
    stored = json.loads(path.read_text())
    stored["meta"]["checkpoint_sha256"] = "0" * 64  # as if copied from another run
    path.write_text(json.dumps(stored))
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"belong to another checkpoint.*delete the file"):
        sampler_options(loaded, cfg, "cpu", STATS)
    assert path.read_bytes() == before


def test_too_few_images_are_refused() -> None:
    with pytest.raises(ValueError, match="--stats-images 5 is too few"):
        StatsConfig(num_images=5)


def test_reverse_variance_tables(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save_random_run(run, tiny_experiment())
    loaded = load_model(run)
    assert reverse_variance(loaded, "5", "model", "cpu") is None
    small = reverse_variance(loaded, "5", "fixed-small", "cpu")
    large = reverse_variance(loaded, "5", "fixed-large", "cpu")
    analytic = reverse_variance(loaded, "5", "analytic", "cpu", STATS)
    assert small.shape == large.shape == analytic.shape == (5,)
    assert bool((small[1:] <= large[1:]).all())  # β̃ ≤ β at every jump
    # Analytic-DPM lies between the two fixed choices (Bao et al., Theorem 2), decoder aside
    assert bool((analytic[1:] >= small[1:] * (1 - 1e-12)).all())
    assert bool(torch.isfinite(analytic).all())


def test_a_checkpoint_is_hashed_once_until_it_changes(tmp_path: Path) -> None:
    f = tmp_path / "step.pt"
    f.write_bytes(b"a" * 1000)
    first = checkpoint_digest(f)
    misses = _file_digest.cache_info().misses
    assert checkpoint_digest(f) == first == hashlib.sha256(b"a" * 1000).hexdigest()
    assert _file_digest.cache_info().misses == misses  # read from the cache, not the file
    f.write_bytes(b"b" * 1001)
    assert checkpoint_digest(f) == hashlib.sha256(b"b" * 1001).hexdigest()
