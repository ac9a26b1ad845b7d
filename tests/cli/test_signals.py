"""Interrupted commands: Ctrl-C exits 130 and SIGTERM 143 with one line on stderr.

Training saves a checkpoint and prints its JSON line ("interrupted": true) first, so
`iddpm train … && iddpm sample …` stops after a pre-emption; sample and nll leave no
partial file. A second Ctrl-C during a checkpoint save lets the save finish; a Ctrl-C
while the command is still starting up exits quietly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from _contract import TINY_TRAIN, error_lines, invoke, tree_state

EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("signals") / "run"
    assert invoke(["train", *TINY_TRAIN, "--run-dir", run]).exit_code == 0
    return run


def _default_signals() -> None:
    # In the child, before exec: a suite started where SIGINT is ignored (a background
    # job, `nohup make test`) would pass SIG_IGN on, Python would then install no
    # KeyboardInterrupt handler, and the child would ignore the test's Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Child:
    """`iddpm ARGS` in a child process with default signal handling, whose stdout and
    stderr are collected as they come; every wait on it has a timeout, and leaving the
    `with` block kills it if it still runs."""

    def __init__(self, args: list[str], cwd: Path, program: tuple[str, ...] = ("-m", "iddpm")):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, *program, *map(str, args)]
        self.proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_default_signals,
        )
        self.out, self.err = bytearray(), bytearray()
        self._readers = [
            threading.Thread(target=self._read, args=(pipe, buf), daemon=True)
            for pipe, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(pipe, buf: bytearray) -> None:
        while chunk := pipe.read1(4096):
            buf += chunk

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def wait_for(self, ready, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.proc.poll() is None, f"exited early: {self.err.decode()}"
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.02)

    def stop(self, sig: signal.Signals, timeout: float = 120) -> tuple[int, str, list[str]]:
        """Send `sig`; (exit code, stdout, visible stderr lines). A child still running
        `timeout` seconds later fails the test (and is killed on leaving `with`)."""
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{sig.name} did not stop the child in {timeout} s") from None
        for reader in self._readers:
            reader.join(timeout=10)
        result = type("R", (), {"stderr": self.err.decode()})
        return code, self.out.decode(), error_lines(result)


def test_a_child_handles_ctrl_c_even_where_the_suite_ignores_it(tmp_path) -> None:
    # as under `nohup make test` or a background job: SIGINT ignored in this process
    script = "import signal, time; h = signal.getsignal(signal.SIGINT); "
    script += "print(getattr(h, '__name__', h), flush=True); time.sleep(60)"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with Child([], tmp_path, program=("-c", script)) as child:
            child.wait_for(lambda: child.out.endswith(b"\n"), timeout=60)
            code, out, _ = child.stop(signal.SIGINT, timeout=30)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert out.strip() == "default_int_handler"  # Python turns Ctrl-C into KeyboardInterrupt
    assert code == -signal.SIGINT  # an uncaught KeyboardInterrupt ends Python by SIGINT


SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])


@pytest.mark.slow
@SIGNALS
def test_interrupted_training_saves_prints_json_and_exits_130_or_143(sig, tmp_path) -> None:
    run = tmp_path / "run"
    args = ["train", *TINY_TRAIN, "--steps", "100000", "--checkpoint-every", "100000"]
    with Child([*args, "--run-dir", run], tmp_path) as child:
        child.wait_for(lambda: (run / "metrics.jsonl").exists())  # after the first logged step
        code, out, lines = child.stop(sig)
    assert code == EXIT[sig], (code, lines)
    assert lines == [f"iddpm: stopped by {sig.name} (checkpoint saved)"], lines
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["interrupted"] and summary["signal"] == sig.name
    state = torch.load(summary["checkpoint"], weights_only=True)
    assert state["step"] == summary["step"] >= 1
    assert not list(run.rglob(".tmp-*"))


LONG_JOBS = {
    "sample": ["--num", "100000", "--batch-size", "50", "--out", "s.npz"],
    "nll": ["--timestep-batch", "1", "--batch-size", "4", "--out-dir", "eval"],
}


@pytest.mark.slow
@SIGNALS
@pytest.mark.parametrize("command", list(LONG_JOBS))
def test_interrupted_sample_and_nll_leave_only_their_job_folder(
    command, sig, trained, tmp_path
) -> None:
    shutil.copytree(trained, tmp_path / "run")
    before = tree_state(tmp_path)
    with Child([command, "run", *LONG_JOBS[command]], tmp_path) as child:
        child.wait_for(lambda: b"sampling" in child.err or b"bits/dim" in child.err)
        time.sleep(0.5)
        code, out, lines = child.stop(sig)
    assert code == EXIT[sig], (code, lines)
    what = "interrupted" if sig == signal.SIGINT else "terminated"
    assert lines == [f"iddpm: {what}"], lines
    assert out == ""
    # nothing half-written: what is new lies in the job folder a rerun resumes from (its
    # manifest and complete shards), and no result file exists yet
    after = tree_state(tmp_path)
    assert {path: after.get(path) for path in before} == before  # nothing that existed changed
    new = set(after) - set(before)
    jobs = {p for p in new if any(part.endswith(".job") for part in Path(p).parts)}
    folders = {str(parent) for p in jobs for parent in Path(p).parents}  # e.g. --out-dir
    assert new <= jobs | folders and all(after[p] == "dir" for p in new - jobs), new
    assert not [p for p in new if ".tmp" in p], new


def test_second_ctrl_c_during_a_checkpoint_save_lets_it_finish(tmp_path, monkeypatch) -> None:
    real_save = torch.save

    def save_while_pressing_ctrl_c_twice(obj, f, *args, **kwargs):
        # inside the checkpoint's atomic write: its temporary file is open
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_while_pressing_ctrl_c_twice)
    run = tmp_path / "run"
    result = invoke(["train", *TINY_TRAIN, "--steps", "5", "--run-dir", run])
    monkeypatch.undo()
    assert result.exit_code == 130, result.stderr
    assert error_lines(result) == ["iddpm: stopped by SIGINT (checkpoint saved)"]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["interrupted"] and summary["step"] == 1
    assert torch.load(run / "checkpoints" / "step_00000001.pt", weights_only=True)["step"] == 1
    assert (run / "config.json").exists() and not list(run.rglob(".tmp-*"))


def test_ctrl_c_while_starting_up_exits_quietly(monkeypatch, capsys) -> None:
    import iddpm.cli

    class Interrupting:
        def find_spec(self, name, path=None, target=None):
            if name == "iddpm.cli._app":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "iddpm.cli._app", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    with pytest.raises(SystemExit) as stop:
        iddpm.cli.main()
    assert stop.value.code == 130
    assert capsys.readouterr().err == "iddpm: interrupted\n"


def test_train_help_documents_the_exit_codes() -> None:
    text = " ".join(invoke(["train", "--help"]).stdout.split())
    assert "exits 130 or 143" in text and "--resume" in text and "exit 2" in text
