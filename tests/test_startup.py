"""The command line's start-up: OpenMP waits passively only beside busy processes, allocator
settings are applied unless the user chose their own, and the prepared GPU check exits at
once with {"cuda": false} where there is no CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from iddpm.cli import _startup

ROOT = Path(__file__).resolve().parents[1]


def test_malloc_is_tuned_and_passed_on_to_children() -> None:
    env: dict[str, str] = {}
    assert _startup.tune_malloc(env) == (
        "tuned" if sys.platform.startswith("linux") else "not-glibc"
    )
    if sys.platform.startswith("linux"):
        assert env == {
            "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
            "MALLOC_TRIM_THRESHOLD_": str(2**30),
        }


@pytest.mark.parametrize(
    ("env", "state"),
    [
        ({"IDDPM_MALLOC": "off"}, "off"),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "explicit"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "explicit"),
        ({"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"}, "preloaded"),
    ],
)
def test_an_explicit_allocator_choice_wins(env: dict[str, str], state: str) -> None:
    before = dict(env)
    assert _startup.tune_malloc(env) == state
    assert env == before  # nothing added for the children either


def test_the_cli_process_starts_tuned() -> None:
    # importing the command line applied the settings (or recorded why not)
    assert _startup.MALLOC in ("tuned", "off", "explicit", "preloaded", "not-glibc")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA path takes minutes")
def test_device_check_without_cuda_prints_one_json_object_at_once() -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("DEVICE_CHECK_DRY_RUN", None)
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh")],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"cuda": False}


def test_busy_cores_are_measured_from_recent_cpu_use() -> None:
    idle = _startup.other_cores_busy(0.05)
    if idle is None:
        pytest.skip("no /proc/stat on this platform")
    assert 0.0 <= idle <= (os.cpu_count() or 1)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        busy = _startup.other_cores_busy(0.3)
    finally:
        spinner.kill()
        spinner.wait(timeout=30)
    assert busy is not None and busy >= 0.6  # one spinning process keeps ~one core busy


@pytest.mark.parametrize(("cores", "expected"), [(0.1, None), (5.0, "PASSIVE")])
def test_openmp_waits_passively_only_beside_busy_processes(monkeypatch, cores, expected) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(_startup, "other_cores_busy", lambda interval_s=0.1: cores)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    _startup.choose_omp_wait_policy()
    assert os.environ.get("OMP_WAIT_POLICY") == expected


def test_an_explicit_wait_policy_wins(monkeypatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setattr(_startup, "other_cores_busy", lambda interval_s=0.1: 99.0)
    _startup.choose_omp_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
