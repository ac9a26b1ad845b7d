"""Process set-up run once when the command line starts, before torch loads: the OpenMP
wait policy and the C allocator's handling of large buffers.

Allocator: glibc's malloc serves every buffer above its mmap threshold (128 KiB at start,
raised dynamically only up to the size of the largest freed buffer) with a fresh mmap and
returns it with munmap, and trims the heap top above 128 KiB of free space; a network's
activations are MiB-sized buffers allocated and freed every step, so each step pays for
mapping, page faults and zeroing again (probes, issue 11: forward passes 1.25–1.37x
faster with MALLOC_MMAP_THRESHOLD_=33554432, 1.55–1.7x with tcmalloc preloaded).
`tune_malloc` makes the process keep that memory: mmap only above 32 MiB (glibc's largest
threshold on 64-bit) and trim only above 1 GiB of free heap. The environment variables
it sets carry the same settings to child processes (torchrun ranks, workers).

An explicit choice wins: nothing is changed when MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
MALLOC_MMAP_MAX_ or GLIBC_TUNABLES is set, when LD_PRELOAD names another allocator
(tcmalloc, jemalloc, mimalloc), or when IDDPM_MALLOC=off. benchmarks/bench_allocator.py
measures training, sampling and bits/dim with and without it (IDDPM_MALLOC=off).
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**30
_ENV = {"MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD, "MALLOC_TRIM_THRESHOLD_": TRIM_THRESHOLD}
_EXPLICIT = ("MALLOC_MMAP_MAX_", "GLIBC_TUNABLES", *_ENV)


def other_cores_busy(interval_s: float = 0.1) -> float | None:
    """How many cores other processes keep busy right now: the non-idle share of all CPU
    time over `interval_s` (this process sleeps meanwhile), from /proc/stat. None where
    that file does not exist."""

    def sample() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return idle, sum(fields)

    first = sample()
    if first is None:
        return None
    time.sleep(interval_s)
    second = sample()
    if second is None or second[1] <= first[1]:
        return None
    idle, total = second[0] - first[0], second[1] - first[1]
    return (1.0 - idle / total) * (os.cpu_count() or 1)


def choose_omp_wait_policy() -> None:
    """OpenMP threads that spin-wait at barriers are fastest on an idle machine (a digits
    step: ~19 steps/s on 2 threads) but collapse when another process shares the cores
    (0.3 steps/s spinning vs 3.0 passive beside one busy process). So wait passively when
    other processes keep at least half the cores busy at start-up; an explicit
    OMP_WAIT_POLICY wins. The measure is the CPU use of the last 0.1 s, not the 1-minute
    load average, which stays high for a minute after a job ends (a demo started right
    after another job would otherwise train ~25% slower for nothing)."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    busy_cores = other_cores_busy()
    if busy_cores is None:
        try:
            busy_cores = os.getloadavg()[0]
        except OSError:  # neither /proc/stat nor a load average on this platform
            busy_cores = 0.0
    if busy_cores >= 0.5 * (os.cpu_count() or 1):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def tune_malloc(environ: dict[str, str] | None = None) -> str:
    """Apply the allocator settings above to this process (glibc only) and its children.

    Returns what happened: "tuned", or why not ("off", "explicit", "preloaded",
    "not-glibc"), which benchmarks record.
    """
    env = os.environ if environ is None else environ
    if env.get("IDDPM_MALLOC", "").lower() in ("off", "0", "default"):
        return "off"
    if any(k in env for k in _EXPLICIT):
        return "explicit"
    if any(a in env.get("LD_PRELOAD", "") for a in ("tcmalloc", "jemalloc", "mimalloc")):
        return "preloaded"
    if not sys.platform.startswith("linux"):
        return "not-glibc"
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    except (OSError, AttributeError):  # musl or another libc without glibc's mallopt
        return "not-glibc"
    if not ok:
        return "not-glibc"
    env.update({k: str(v) for k, v in _ENV.items()})
    return "tuned"


choose_omp_wait_policy()
MALLOC = tune_malloc()
