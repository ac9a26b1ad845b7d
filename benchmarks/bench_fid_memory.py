"""Peak memory of `iddpm fid` against the number of samples; prints one JSON object.

    python benchmarks/bench_fid_memory.py                     # 10,000 and 50,000 samples
    python benchmarks/bench_fid_memory.py --sizes 1000,5000 --bootstrap 20

For each size N, digits-like samples (test digits shifted by up to a pixel, with a little
noise; what they are does not matter for memory) are written to an .npz, and a fresh
subprocess runs `iddpm fid S.npz --ref digits` (the digits extractor, every metric), then
reports its peak resident set (ru_maxrss). Up to 10,000 samples memory grows with N by
design (precision/recall and KID keep the first 10,000 feature rows, KID's subsets grow to
1,000); beyond that only the running sums remain, so `growth_mb` = peak(largest N) −
peak(smallest N) for sizes ≥ 10,000 stays near 0. The stated bound (`bound_mb`) is the peak
at the smallest size plus BOUND_SLACK_MB; `within_bound` says whether the largest run
stayed in it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BOUND_SLACK_MB = 64.0


def samples(n: int, path: Path) -> Path:
    from iddpm.data.bundled import load_digits

    base = load_digits("test").images
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(base), n)
    out = np.empty((n, 8, 8, 1), np.uint8)
    for k, (dy, dx) in enumerate(rng.integers(-1, 2, (n, 2))):
        out[k] = np.roll(base[idx[k]], (dy, dx), axis=(0, 1))
    noise = rng.integers(0, 16, out.shape, dtype=np.uint8)
    np.savez(path, arr_0=np.clip(out.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return path


CHILD = """
import json, resource, sys, time
from iddpm.cli import main
sys.argv = ["iddpm", *json.loads(sys.argv[1])]
start = time.perf_counter()
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - start, "code": code}), file=sys.stderr)
"""


def run(n: int, folder: Path, bootstrap: int) -> dict:
    npz = samples(n, folder / f"s{n}.npz")
    args = [
        "fid",
        str(npz),
        "--ref",
        "digits",
        "--device",
        "cpu",
        "--out",
        str(folder / f"{n}.json"),
    ]
    if bootstrap:
        args += ["--bootstrap", str(bootstrap)]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    if report["code"] not in (0, None):
        raise SystemExit(proc.stderr[-2000:])
    fid = json.loads((folder / f"{n}.json").read_text())
    return {"num_samples": n, "peak_mb": round(report["peak_mb"], 1),
            "seconds": round(report["seconds"], 1), "fid": fid["fid"],
            "npz_mb": round(npz.stat().st_size / 2**20, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,50000")
    parser.add_argument("--bootstrap", type=int, default=0)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(n, Path(tmp), args.bootstrap) for n in sizes]
    bound = rows[0]["peak_mb"] + BOUND_SLACK_MB
    print(json.dumps({
        "benchmark": "fid_memory",
        "features": "digits",
        "bootstrap": args.bootstrap,
        "runs": rows,
        "growth_mb": round(rows[-1]["peak_mb"] - rows[0]["peak_mb"], 1),
        "bound_mb": round(bound, 1),
        "within_bound": rows[-1]["peak_mb"] <= bound,
        "wall_seconds": round(time.time() - start, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
