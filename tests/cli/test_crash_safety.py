"""kill -9 at random moments during training, then resume: the final checkpoint equals an
uninterrupted run's bit for bit, no temporary file is left, and metrics.jsonl holds each
step once (scripts/crash_trials.py runs the same trials 20 times)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from _contract import invoke

SCRIPT = Path(__file__).parents[2] / "scripts" / "crash_trials.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("crash_trials", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _in_process(args) -> int:
    return invoke(list(args)).exit_code


@pytest.mark.slow
def test_killed_training_resumes_bitwise(tmp_path: Path) -> None:
    crash = _load_script()
    # resumes and the reference run here (one thread, as the killed children)
    summary = crash.trials(tmp_path, n=3, steps=16, seed=1, run=_in_process)
    assert summary["failures"] == [], summary["failures"]
    assert summary["killed"] >= 2, summary["rows"]  # the kills landed inside training
    for row in summary["rows"]:  # at most one checkpoint interval lost
        assert 0 <= row["steps_lost"] <= crash.CHECKPOINT_EVERY, row
