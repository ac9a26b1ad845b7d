"""The command line's progress bars: what a user reads on stderr for each kind of phase
(the first render; later ones are rate-limited)."""

from __future__ import annotations

from iddpm.cli._progress import tqdm_progress


def _shown(capsys, desc: str, total: float | None, unit: str, updates: int) -> str:
    with tqdm_progress(desc, total, unit) as bar:
        for _ in range(updates):
            bar.update(1, loss=0.5)
    return capsys.readouterr().err


def test_an_indivisible_task_shows_its_name_without_a_zero_counter(capsys) -> None:
    err = _shown(capsys, "analytic: statistics of 1000 images", None, "task", 0)
    assert "analytic: statistics of 1000 images…" in err
    assert "0task" not in err and "?task/s" not in err


def test_a_time_budget_shows_seconds_and_time_left(capsys) -> None:
    err = _shown(capsys, "train", 10, "s", 0)
    assert "train:   0%|" in err and "0/10 s, ? left" in err


def test_a_counted_phase_shows_its_unit_and_rate(capsys) -> None:
    err = _shown(capsys, "sampling", 4, "img", 0)
    assert "0/4" in err and "img/s" in err
