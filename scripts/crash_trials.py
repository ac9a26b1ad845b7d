"""Crash safety of training: kill -9 it at random moments, resume, compare bitwise.

    python scripts/crash_trials.py [--trials 20] [--steps 40] [--seed 0] [--work DIR]

Trains a tiny digits model once without interruption (the reference), then for each
trial starts the same training in a child process, SIGKILLs it once the metrics log shows
a random step (plus a random fraction of a step, so kills land inside steps, log writes
and checkpoint saves), resumes it (`--resume`, or a fresh start when no checkpoint was
complete yet) and checks that:
- the final checkpoint equals the reference's bit for bit (model, EMA, optimizer,
  timestep sampler, data order);
- no temporary file is left anywhere in the run;
- metrics.jsonl holds every logged step exactly once.
Prints one JSON object: {"trials", "killed", "mean_steps_lost", "failures": [...]}, where a
trial's steps lost = the last logged step before the kill minus the step resumed from.
Every process runs on one CPU thread, so the float results cannot depend on thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CHECKPOINT_EVERY = 4
FLAGS = [
    *("--batch-size", "4", "--model-channels", "32", "--channel-mult", "1,2"),
    *("--num-res-blocks", "1", "--attention-resolutions", "4", "--num-heads", "2"),
    *("--diffusion-steps", "20", "--checkpoint-every", str(CHECKPOINT_EVERY)),
    *("--log-every", "1", "--keep-checkpoints", "2", "--ema-rates", "0.99", "--seed", "3"),
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
Runner = Callable[[Sequence[str]], int]  # iddpm ARGS -> exit code


def run_in_child(args: Sequence[str], timeout: float = 900) -> int:
    """`iddpm ARGS` in a child process on one thread; returns its exit code. A child still
    running after `timeout` seconds is killed (subprocess.TimeoutExpired), so a hung run
    fails instead of hanging the caller."""
    cmd = [sys.executable, "-m", "iddpm", *map(str, args)]
    return subprocess.run(cmd, env=ENV, capture_output=True, timeout=timeout).returncode


def train_args(run: Path, steps: int) -> list[str]:
    return ["train", *FLAGS, "--steps", str(steps), "--run-dir", str(run)]


def logged_steps(run: Path) -> list[int]:
    """Steps of the complete lines of metrics.jsonl, in file order."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().split("\n")[:-1]:  # the last piece may be cut short
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):
            steps.append(-1)
    return steps


def kill_at_random(run: Path, steps: int, rng: random.Random, timeout: float = 300) -> int:
    """Start training in a child and SIGKILL it after a random logged step; returns the
    last logged step at the kill (steps if it finished first)."""
    target, extra = rng.randint(1, steps - 1), rng.random()
    cmd = [sys.executable, "-m", "iddpm", *train_args(run, steps)]
    child = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, first = time.monotonic() + timeout, None
    try:
        while child.poll() is None and time.monotonic() < deadline:
            done = logged_steps(run)
            if done and first is None:
                first = (time.monotonic(), done[-1])
            if done and done[-1] >= target:
                # a random fraction of the measured time per step past the target step
                per_step = (time.monotonic() - first[0]) / max(done[-1] - first[1], 1)
                time.sleep(extra * per_step)
                break
            time.sleep(0.005)
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)  # SIGKILL cannot be ignored; this only bounds the wait
    done = logged_steps(run)
    return max(done) if done else 0


def checkpoint_step(run: Path) -> int:
    """The step of the newest complete checkpoint (0: none)."""
    names = [p.name for p in (run / "checkpoints").glob("step_*.pt")] if run.exists() else []
    return max((int(n[5:13]) for n in names), default=0)


def differences(a: Path, b: Path) -> list[str]:
    """Entries of two checkpoints that are not bitwise equal."""
    import torch

    sa, sb = (torch.load(p, weights_only=True) for p in (a, b))
    out: list[str] = []
    for key in ("model", "ema", "optimizer", "sampler", "data", "step"):
        _compare(sa.get(key), sb.get(key), key, out)
    return out


def _compare(x: Any, y: Any, where: str, out: list[str]) -> None:
    import torch

    if isinstance(x, dict) and isinstance(y, dict):
        if set(x) != set(y):
            out.append(f"{where}: keys differ")
        for k in set(x) & set(y):
            _compare(x[k], y[k], f"{where}.{k}", out)
    elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y):
        for i, (u, v) in enumerate(zip(x, y)):
            _compare(u, v, f"{where}[{i}]", out)
    elif isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            out.append(where)
    elif x != y:
        out.append(where)


def trial(work: Path, k: int, steps: int, rng: random.Random, run: Runner, ref: Path) -> dict:
    """One kill -9 / resume / compare trial in work/trial_k."""
    folder = work / f"trial_{k}"
    killed_at = kill_at_random(folder, steps, rng)
    resumed_from = checkpoint_step(folder)
    if resumed_from:
        code = run(["train", "--resume", "--run-dir", str(folder)])
    else:  # killed before the first save: start afresh in the same folder
        code = run(train_args(folder, steps))
    problems = [] if code == 0 else [f"resume exited {code}"]
    final = folder / "checkpoints" / f"step_{steps:08d}.pt"
    problems += (
        [f"differs: {d}" for d in differences(final, ref)]
        if final.exists()
        else ["no final checkpoint"]
    )
    problems += [f"temp file {p.name}" for p in folder.rglob(".tmp-*")]
    if logged_steps(folder) != list(range(1, steps + 1)):
        problems.append(f"metrics steps {logged_steps(folder)}")
    return {
        "trial": k,
        "killed_at_step": killed_at,
        "resumed_from": resumed_from,
        "steps_lost": killed_at - resumed_from,
        "problems": problems,
    }


def trials(
    work: Path, n: int, steps: int = 40, seed: int = 0, run: Runner = run_in_child
) -> dict[str, Any]:
    """`n` trials against one uninterrupted reference run; the summary as a dict."""
    if run(train_args(work / "reference", steps)) != 0:
        raise RuntimeError("the reference training failed")
    ref = work / "reference" / "checkpoints" / f"step_{steps:08d}.pt"
    rng = random.Random(seed)
    rows = [trial(work, k, steps, rng, run, ref) for k in range(n)]
    killed = [r for r in rows if r["killed_at_step"] < steps]
    lost = [r["steps_lost"] for r in killed]
    return {
        "trials": n,
        "killed": len(killed),
        "steps": steps,
        "checkpoint_every": CHECKPOINT_EVERY,
        "mean_steps_lost": sum(lost) / len(lost) if lost else None,
        "failures": [r for r in rows if r["problems"]],
        "rows": rows,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here")
    a = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        summary = trials(work, a.trials, a.steps, a.seed)
    summary.pop("rows")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
