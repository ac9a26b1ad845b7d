"""Crash safety of the resumable evaluation jobs: kill -9 them at random moments, rerun the
same command, compare with an uninterrupted run bitwise.

    python scripts/crash_trials_eval.py [--jobs fid,sample,nll] [--trials 10] [--seed 0]
                                        [--run RUN] [--work DIR]

For each job, one uninterrupted run gives the reference outputs and the run time t. Each
trial starts the same command in a child process (shards small, so kills land inside and
between shard writes), SIGKILLs it after a random delay in [0, 1.2 t] (a process that
finished first counts as not killed), reruns the command to completion (twice when the
first rerun is killed as well: every third trial) and checks that:
- the result files equal the reference's bit for bit (sample: the .npz; fid: the summary
  JSON; nll: the summary JSON without timings and the per-image bits/dim .npz);
- nothing else is left in the output folder: no temporary file, no job folder.
Prints one JSON object: {"jobs": {name: {"trials", "killed", "failures": [...]}}}.
Every process runs on one CPU thread, so float results cannot depend on thread count.
`--run` names a trained run for sample/nll (default: a tiny one trained here).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import iddpm

# the children run in other folders: this iddpm's folder goes on their path
SRC = str(Path(iddpm.__file__).resolve().parents[1])
PATH = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": PATH}
TINY_TRAIN = [
    *("--steps", "2", "--batch-size", "4", "--model-channels", "32", "--channel-mult", "1,2"),
    *("--num-res-blocks", "1", "--attention-resolutions", "4", "--num-heads", "2"),
    *("--diffusion-steps", "20", "--ema-rates", "0.99"),
]
VOLATILE = {"seconds", "images_per_s", "job_dir"}  # timings and paths differ between runs


def iddpm(args: list[str], cwd: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "iddpm", *map(str, args)]
    return subprocess.Popen(cmd, env=ENV, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run(args: list[str], cwd: Path) -> None:
    proc = iddpm(args, cwd)
    _, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"iddpm {' '.join(map(str, args))} failed: {err.decode()[-800:]}")


def jobs(run_dir: Path, data: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name → (arguments, result files), run in an empty folder."""
    return {
        "fid": (["fid", data, "--ref", "digits", "--shard-size", "64", "--bootstrap", "5",
                 "--out", "r.json", "--batch-size", "32"], ["r.json"]),
        "sample": (["sample", run_dir, "--num", "48", "--steps", "10", "--batch-size", "8",
                    "--shard-size", "8", "--out", "s.npz", "--grid", "s.png"],
                   ["s.npz", "s.json"]),
        "nll": (["nll", run_dir, "--num-images", "24", "--batch-size", "4", "--shard-size", "4",
                 "--steps", "10", "--out-dir", "."], []),
    }  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder → its bytes (JSON without the volatile keys)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if path.suffix == ".json":
                obj = {k: v for k, v in json.loads(data).items() if k not in VOLATILE}
                data = json.dumps(obj, sort_keys=True).encode()
            if path.suffix == ".png":  # the grid is derived from the samples; keep its name
                data = b"png"
            out[str(path.relative_to(folder))] = data
    return out


def trial(args: list[str], reference: dict, seconds: float, folder: Path, rng: random.Random,
          kills: int) -> tuple[bool, str | None]:  # fmt: skip
    killed = False
    for _ in range(kills):
        proc = iddpm(args, folder)
        time.sleep(rng.uniform(0.0, 1.2 * seconds))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed = True
        proc.communicate()
    run(args, folder)
    got = snapshot(folder)
    if got.keys() != reference.keys():
        return killed, f"files {sorted(got)} != {sorted(reference)}"
    bad = [name for name in got if got[name] != reference[name]]
    return killed, (f"differs: {bad}" if bad else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", default="fid,sample,nll")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="crash-eval-"))
    work.mkdir(parents=True, exist_ok=True)
    run_dir = args.run
    if run_dir is None:
        run_dir = work / "run"
        if not run_dir.exists():
            run(["train", *TINY_TRAIN, "--run-dir", run_dir], work)
    import numpy as np

    from iddpm.data.bundled import load_digits

    data = work / "data.npz"
    np.savez(data, arr_0=load_digits("test").images[:300])
    report = {}
    for name in args.jobs.split(","):
        job_args, _ = jobs(run_dir.resolve(), data.resolve())[name]
        ref_dir = work / f"{name}-ref"
        shutil.rmtree(ref_dir, ignore_errors=True)
        ref_dir.mkdir()
        start = time.perf_counter()
        run(job_args, ref_dir)
        seconds = time.perf_counter() - start
        reference = snapshot(ref_dir)
        failures, killed = [], 0
        for k in range(args.trials):
            folder = work / f"{name}-{k}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            was_killed, problem = trial(
                job_args, reference, seconds, folder, rng, 2 if k % 3 == 2 else 1
            )
            killed += was_killed
            if problem:
                failures.append({"trial": k, "problem": problem})
        report[name] = {"trials": args.trials, "killed": killed,
                        "reference_seconds": round(seconds, 1), "failures": failures}  # fmt: skip
    print(json.dumps({"jobs": report, "work": str(work)}))


if __name__ == "__main__":
    main()
