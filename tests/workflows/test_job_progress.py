"""Progress plumbing of the jobs: running totals from library code become bar increments."""

from __future__ import annotations

from iddpm.workflows.progress import running_total


class _Bar:
    def __init__(self) -> None:
        self.updates: list[float] = []

    def update(self, n: float = 1, **postfix: float) -> None:
        self.updates.append(n)


def test_running_totals_become_increments_and_extra_arguments_are_ignored() -> None:
    bar = _Bar()
    tick = running_total(bar)
    tick(3)
    tick(10, 12)  # (done, total), as prepare_data reports
    tick(12, 12)
    assert bar.updates == [3, 7, 2]
