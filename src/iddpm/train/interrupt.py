"""Stopping a run cleanly: SIGINT/SIGTERM, `request_stop()` and the time budget.

A signal only sets a flag; the trainer finishes the current step, writes a checkpoint and
returns. A second Ctrl-C aborts at once. Under several ranks the flags are summed across
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

    def request(self) -> None:
        self.requested = True

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
            if self.requested:  # a second Ctrl-C aborts at once
                raise KeyboardInterrupt
            self.requested = True

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
