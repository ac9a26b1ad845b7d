"""How jobs report progress without printing: the caller passes a `Progress` factory.

A job opens one bar per phase, `with progress(desc, total, unit) as bar:`, and calls
`bar.update(n, **postfix)`; `total` may be None (unknown). A phase that cannot count its
work (one indivisible computation) uses the unit "task" and never updates. The command line
passes a tqdm factory on rank 0; library callers pass nothing and get `silent`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol


class Bar(Protocol):
    def update(self, n: float = 1, **postfix: float) -> None: ...


class Progress(Protocol):
    def __call__(
        self, desc: str, total: float | None, unit: str
    ) -> AbstractContextManager[Bar]: ...


class _NullBar:
    def update(self, n: float = 1, **postfix: float) -> None:
        pass


def running_total(bar: Bar) -> Callable[..., None]:
    """A callback for library code that reports the running total done so far (its first
    argument; more are ignored), turned into the increments `bar.update` takes."""
    last = 0

    def tick(done: float, *_: Any) -> None:
        nonlocal last
        bar.update(done - last)
        last = done

    return tick


@contextmanager
def silent(desc: str, total: float | None, unit: str) -> Iterator[Bar]:
    """A Progress that shows nothing."""
    yield _NullBar()
