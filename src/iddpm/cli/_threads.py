"""OpenMP's wait policy, chosen once when the command line starts, before torch loads."""

from __future__ import annotations

import os


# Before torch loads: OpenMP threads that spin-wait at barriers are fastest on an idle
# machine (a digits step: ~19 steps/s on 2 threads) but collapse when another process
# shares the cores (0.3 steps/s spinning vs 3.0 passive beside one busy process). So wait
# passively when the machine is already busy at start-up; an explicit setting wins.
def _choose_omp_wait_policy() -> None:
    if "OMP_WAIT_POLICY" in os.environ:
        return
    try:
        busy = os.getloadavg()[0] >= 0.5 * (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        busy = False
    if busy:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


_choose_omp_wait_policy()
