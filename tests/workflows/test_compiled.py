"""`sample`/`nll --compile`: the compiled forward is made only once the job's inputs are
checked (torch.compile makes its cache folder as soon as it is called), its cache goes into
the run when the run is writable and stays inductor's own otherwise."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import save_random_run, tiny_experiment
from iddpm.build import load_model
from iddpm.config import EvalConfig, SampleConfig
from iddpm.workflows.context import StatsConfig
from iddpm.workflows.nll import NllJob, nll_to_files
from iddpm.workflows.plan import compiled
from iddpm.workflows.sample import SampleJob, sample_to_files


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-default"))
    run = tmp_path / "run"
    save_random_run(run, tiny_experiment())
    return run


def test_sampler_statistics_are_estimated_before_compiling(run: Path, tmp_path: Path) -> None:
    few = tmp_path / "few.npz"
    np.savez(few, arr_0=np.zeros((10, 8, 8, 1), np.uint8))  # too few for Γ
    before = _tree(run)
    cfg = SampleConfig(num=2, steps="5", sampler="analytic")
    with pytest.raises(ValueError, match="statistics need at least"):
        sample_to_files(SampleJob(run, cfg, stats=StatsConfig(data=str(few)), compile=True))
    assert _tree(run) == before


@pytest.mark.parametrize(
    "job",
    [
        lambda run: sample_to_files(SampleJob(run, SampleConfig(num=2, steps="999"), compile=True)),
        lambda run: nll_to_files(NllJob(run, EvalConfig(steps="999"), compile=True)),
        lambda run: nll_to_files(NllJob(run, EvalConfig(data=str(run / "nope")), compile=True)),
    ],
    ids=["sample bad steps", "nll bad steps", "nll missing data"],
)
def test_a_rejected_compiled_job_leaves_the_run_as_it_was(run: Path, job) -> None:
    before = _tree(run)
    with pytest.raises((ValueError, FileNotFoundError)):
        job(run)
    assert _tree(run) == before


def test_the_cache_goes_into_a_writable_run(run: Path) -> None:
    compiled(load_model(run), True)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((run / "cache" / "inductor").resolve())


def test_a_read_only_run_keeps_inductors_own_cache(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == run else real_access(p, m))
    compiled(load_model(run), True)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor-default")
    assert not (run / "cache").exists()
