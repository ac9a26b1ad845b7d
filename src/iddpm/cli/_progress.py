"""Progress bars on stderr (rank 0 only): the `Progress` the command line gives every job."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from iddpm.workflows import runtime


class _TqdmBar:
    def __init__(self, bar: tqdm) -> None:
        self._bar = bar

    def update(self, n: float = 1, **postfix: float) -> None:
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)


@contextmanager
def tqdm_progress(desc: str, total: float | None, unit: str) -> Iterator[_TqdmBar]:
    """A bar with rate and ETA; in seconds (unit "s") it shows the time left of a budget."""
    fmt = None
    if unit == "s":
        fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s, {remaining} left{postfix}"
    elif unit == "task":
        fmt = "{desc}…"
    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
        disable=not runtime.is_main(),
        leave=False,
        bar_format=fmt,
    )
    try:
        yield _TqdmBar(bar)
    finally:
        bar.close()
