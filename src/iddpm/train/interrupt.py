"""Stopping a run cleanly: SIGINT/SIGTERM, `request_stop()` and the time budget.

A signal only sets a flag (and records which signal it was); the trainer finishes the
current step, writes a checkpoint and returns. A second Ctrl-C aborts at once, except while
a checkpoint is being written (`saving()`): that write finishes first, since one cut short
would lose the checkpoint, and the run then stops. Under several ranks the flags are summed across
ranks, so all stop at the same step (a signal may reach only some ranks, and clocks
differ; a rank that stopped alone would leave the others hanging in a collective).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch

from iddpm import distributed


class StopFlag:
    """Set by SIGINT/SIGTERM while `handling_signals()` is active, or by `request()`."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None  # "SIGINT"/"SIGTERM" when a signal asked
        self._saving = False

    def request(self) -> None:
        self.requested = True

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """While a checkpoint is written, further signals wait for it instead of aborting."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def agreed(self, time_up: bool, world_size: int, device: torch.device) -> tuple[bool, bool]:
        """(stop requested on any rank, time limit reached on any rank)."""
        if world_size == 1:
            return self.requested, time_up
        flags = torch.tensor([float(self.requested), float(time_up)], device=device)
        signalled, timed_out = (bool(v > 0) for v in distributed.all_reduce_sum(flags).tolist())
        return signalled, timed_out

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Route SIGINT/SIGTERM to this flag (main thread only), restoring the old handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return

        def handler(signum: int, frame: Any) -> None:
            if self.requested and not self._saving:  # a second Ctrl-C aborts at once
                raise KeyboardInterrupt
            if not self.requested:
                self.requested, self.signal_name = True, signal.Signals(signum).name

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
