"""The training job: checks before writes, metrics cut back on resume, progress by time."""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import tiny_experiment
from iddpm.train.trainer import Trainer
from iddpm.workflows.train import TrainJob, base_config, train


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resume_drops_the_metric_lines_of_steps_it_retrains(tmp_path: Path) -> None:
    cfg = tiny_experiment()  # 4 steps, log every 2, checkpoint every 2
    cfg = cfg.replace(train=cfg.train.replace(log_every=1))
    run = tmp_path / "run"
    train(TrainJob(cfg, run))
    assert _steps(run) == [1, 2, 3, 4]
    (run / "checkpoints" / "step_00000004.pt").unlink()  # as if killed before that save
    summary = train(TrainJob(cfg, run, resume=True))
    assert summary["step"] == 4 and summary["steps_run"] == 2
    assert _steps(run) == [1, 2, 3, 4]  # steps 3 and 4 once each, from the resumed run


def test_a_failed_resume_changes_no_file(tmp_path: Path) -> None:
    cfg = tiny_experiment()
    run = tmp_path / "run"
    train(TrainJob(cfg, run))
    before = _tree_hashes(run)
    other = cfg.replace(diffusion=cfg.diffusion.replace(num_timesteps=30))
    with pytest.raises(ValueError, match="different config"):
        train(TrainJob(other, run, resume=True))
    assert _tree_hashes(run) == before


def test_resume_takes_the_runs_own_config(tmp_path: Path) -> None:
    # (a --preset/--config given with --resume is checked against it by the command:
    # tests/cli/test_run_state.py)
    cfg = tiny_experiment()
    run = tmp_path / "run"
    train(TrainJob(cfg, run))
    assert base_config(None, None, run, resume=True) == cfg
    assert base_config("cifar10", None, run, resume=True) == cfg
    with pytest.raises((FileNotFoundError, ValueError)):
        base_config(None, None, tmp_path / "nothing", resume=True)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"--config .*bad.json is not valid JSON"):
        base_config("digits", bad, tmp_path / "new", resume=False)


def test_a_time_budget_is_shown_as_seconds_left(tmp_path: Path) -> None:
    cfg = tiny_experiment()
    cfg = cfg.replace(train=cfg.train.replace(steps=100_000))
    seen: dict = {"updates": []}

    class Bar:
        def update(self, n: float = 1, **postfix: float) -> None:
            seen["updates"].append((n, postfix))

    @contextmanager
    def progress(desc: str, total: float | None, unit: str):
        seen.update(desc=desc, total=total, unit=unit)
        yield Bar()

    summary = train(TrainJob(cfg, tmp_path / "run", max_minutes=0.01), progress=progress)
    assert summary["time_limit_reached"] and summary["step"] < 100_000
    assert (seen["total"], seen["unit"]) == (0.6, "s")  # the bar counts the budget's seconds
    assert sum(n for n, _ in seen["updates"]) <= 0.6 + 1e-9
    assert all("step" in postfix for _, postfix in seen["updates"])


def test_a_compiled_run_keeps_its_kernels_in_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache is pointed into the run only once the run can start (torch.compile makes
    the folder as soon as it is called); the steps themselves are stubbed out here."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setattr(Trainer, "run", lambda self, max_seconds=None: {"step": 0})
    cfg = tiny_experiment()
    cfg = cfg.replace(train=cfg.train.replace(compile=True))
    run = tmp_path / "run"
    train(TrainJob(cfg, run))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((run / "cache" / "inductor").resolve())
