"""Memory-mapped training data: peak memory and speed of training on a data set far larger
than the process may hold; prints one JSON object.

    python benchmarks/bench_mmap_data.py                      # 250k × 64×64×3 = 3.07 GB
    python benchmarks/bench_mmap_data.py --images 20000 --steps 10   # a quick look

In a temporary folder (deleted at the end; the free disk is checked first), each part in
its own child process:
1. `write`: the synthetic data set as downsampled-ImageNet style .npz batch files (CHW
   rows, 1-based labels), one file at a time;
2. `prepare`: `prepare_data` on that folder (seconds, MB/s, peak RSS); the .npz files are
   then deleted;
3. `train`: a tiny 64×64 UNet trained with the library (`build_unet`, `build_diffusion`,
   `ImageBatches`, `Trainer`, wired as `workflows.train.build_trainer` does) on the prepared folder
   through `load_dataset`, its page cache for that file dropped first (posix_fadvise), so
   batches come from disk. Peak RSS: the child's ru_maxrss from os.wait4 (RUSAGE_CHILDREN
   for that one child; the parent stays small because Linux starts a child's ru_maxrss at
   its parent's peak) and its own VmHWM; both count the mapped pages it touched.
4. `compare`: throughput, three trainers in ONE process interleaved step by step (a busy
   machine slows them alike): `memory` (the first `--baseline-images` images in RAM, a data
   set that fits), `mmap` (the prepared map, with next-batch readahead hints) and
   `mmap_no_prefetch`; cache dropped at the start; median step times and batch-draw times.
5. `locality`: one batch's rows read from the cold map in batch order or sorted by index.

Children run with 1 torch thread (`--threads`): two threads on a busy 2-core machine made
even the uint8→float conversion of a batch 100× slower, swamping what is compared.
Targets (issue 11): peak RSS of the training child ≤ 1 GB; mmap steps/s equal to memory's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIDE, CHANNELS = 64, 3
ROW = SIDE * SIDE * CHANNELS


def _evict(path: Path) -> None:
    """Drop this one file's pages from the page cache (clean pages only; others untouched)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _write_npz_batches(folder: Path, n: int, files: int, seed: int) -> float:
    """n random images as `files` .npz batches; returns seconds. One file in memory."""
    folder.mkdir()
    rng, start = np.random.default_rng(seed), time.perf_counter()
    for i, rows in enumerate(np.array_split(np.arange(n), files), start=1):
        data = np.frombuffer(rng.bytes(len(rows) * ROW), np.uint8).reshape(len(rows), ROW)
        labels = rng.integers(1, 1001, size=len(rows))
        np.savez(folder / f"train_data_batch_{i}.npz", data=data, labels=labels)
        del data
    return time.perf_counter() - start


def _run_child(args: list[str]) -> tuple[dict, float]:
    """Run this script as a child; returns (its JSON, its ru_maxrss in MiB from os.wait4)."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {' '.join(args[:2])} failed with exit code {proc.returncode}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024  # KiB -> MiB


def _vm_hwm_mb() -> float:
    """This process's own peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- children ---------------------------------------------------------------------------


def child_write(folder: str, n: int, files: int) -> dict:
    return {"write_npz_s": _write_npz_batches(Path(folder), n, files, seed=0)}


def child_prepare(src: str, out: str) -> dict:
    from iddpm.data.prepared import prepare_data

    start = time.perf_counter()
    info = prepare_data(src, out)
    wall = time.perf_counter() - start
    mib = info.nbytes / 2**20
    return {"wall_s": wall, "mb_per_s": mib / wall, "images": info.num_images,
            "vm_hwm_mb": _vm_hwm_mb()}  # fmt: skip


class _TimedBatches:
    """The batch iterator with the wall time of each draw recorded."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds = inner, []

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        batch = next(self.inner)
        self.seconds.append(time.perf_counter() - start)
        return batch

    def state_dict(self):
        return self.inner.state_dict()


def _trainer(images: np.ndarray, args: argparse.Namespace, prefetch: bool = True, seed: int = 0):
    """A Trainer of the tiny 64×64 UNet on `images`, and its timed batch iterator; `seed`
    picks the batch order (variants in one process must not read each other's rows)."""
    import torch

    from iddpm.build import build_diffusion, build_timestep_sampler, build_unet
    from iddpm.config import DiffusionConfig, ExperimentConfig, TrainConfig, UNetConfig
    from iddpm.data.loader import ImageBatches
    from iddpm.train.trainer import Trainer

    model = UNetConfig(
        image_size=SIDE,
        model_channels=args.width,
        num_res_blocks=1,
        attention_resolutions=(),
        channel_mult=(1, 2, 2, 2),
        num_groups=8,
    )
    train = TrainConfig(data="bench", batch_size=args.batch, steps=10**9, log_every=10**9)
    cfg = ExperimentConfig(DiffusionConfig(num_timesteps=1000), model, train)
    batches = _TimedBatches(
        ImageBatches(images, None, args.batch, seed=seed, random_flip=True, prefetch=prefetch)
    )
    torch.manual_seed(0)
    unet, diffusion = build_unet(cfg.model), build_diffusion(cfg.diffusion)
    sampler = build_timestep_sampler(cfg.diffusion)
    return Trainer(unet, diffusion, batches, sampler, cfg), batches


def _timed_step(trainer) -> float:
    start = time.perf_counter()
    trainer.step()
    return time.perf_counter() - start


def child_train(data: str, args: argparse.Namespace) -> dict:
    import torch

    from iddpm.data.mapped import IMAGES
    from iddpm.data.spec import load_dataset

    torch.set_num_threads(args.threads)
    ds = load_dataset(data, "train", resolution=SIDE)
    _evict(Path(data) / IMAGES)
    trainer, batches = _trainer(ds.images, args)
    for _ in range(3):  # warm-up: allocator, first touch of the weights
        trainer.step()
    times = [_timed_step(trainer) for _ in range(args.steps)]
    return {
        "torch": torch.__version__,
        "images": len(ds.images),
        "steps": args.steps,
        "steps_per_s": 1.0 / statistics.median(times),
        "median_batch_draw_ms": 1000 * statistics.median(batches.seconds[3:]),
        "vm_hwm_mb": _vm_hwm_mb(),
    }


def child_compare(data: str, args: argparse.Namespace) -> dict:
    import torch

    from iddpm.data.mapped import IMAGES
    from iddpm.data.spec import load_dataset

    torch.set_num_threads(args.threads)
    mapped = load_dataset(data, "train", resolution=SIDE).images
    variants = {
        "memory": _trainer(np.array(mapped[: args.baseline_images]), args, seed=0),
        "mmap": _trainer(mapped, args, seed=1),
        "mmap_no_prefetch": _trainer(mapped, args, prefetch=False, seed=2),
    }
    _evict(Path(data) / IMAGES)  # after the baseline's copy: the map starts cold
    times: dict[str, list[float]] = {k: [] for k in variants}
    for step in range(args.steps + 3):
        for name, (trainer, _) in variants.items():
            seconds = _timed_step(trainer)
            if step >= 3:
                times[name].append(seconds)
    out: dict[str, object] = {}
    for name, (_, batches) in variants.items():
        draws = batches.seconds[3:]
        out[name] = {
            "median_step_s": statistics.median(times[name]),
            "median_batch_draw_ms": 1000 * statistics.median(draws),
            "p90_batch_draw_ms": 1000 * float(np.percentile(draws, 90)),
        }
    for name in ("mmap", "mmap_no_prefetch"):
        ratio = out["memory"]["median_step_s"] / out[name]["median_step_s"]
        out[f"{name}_over_memory_steps_per_s"] = ratio
    return out


def _draw_rows(images: np.ndarray, idx: np.ndarray, sort: bool) -> np.ndarray:
    if not sort:
        return images[idx]
    order = np.argsort(idx, kind="stable")
    out = np.empty((len(idx), *images.shape[1:]), images.dtype)
    out[order] = images[idx[order]]
    return out


def child_locality(data: str, args: argparse.Namespace) -> dict:
    """Seconds per batch of rows read from the map, in batch order vs sorted, interleaved."""
    from iddpm.data.mapped import IMAGES
    from iddpm.data.spec import load_dataset

    batch, draws = args.batch, args.draws
    images = load_dataset(data).images
    rng = np.random.default_rng(1)
    out: dict[str, list[float]] = {"cold_unsorted": [], "cold_sorted": [], "warm_unsorted": []}
    out["warm_sorted"] = []
    _evict(Path(data) / IMAGES)
    for _ in range(draws):
        for sort in (False, True):  # fresh rows each time: cold reads from disk
            idx = rng.integers(0, len(images), size=batch)
            start = time.perf_counter()
            rows = _draw_rows(images, idx, sort)
            out["cold_sorted" if sort else "cold_unsorted"].append(time.perf_counter() - start)
            for sort2 in (False, True):  # the same rows again: from the page cache
                start = time.perf_counter()
                again = _draw_rows(images, idx, sort2)
                out["warm_sorted" if sort2 else "warm_unsorted"].append(time.perf_counter() - start)
                assert np.array_equal(again, rows)
    result = {k + "_ms": 1000 * statistics.median(v) for k, v in out.items()}
    result["cold_sorted_over_unsorted"] = result["cold_sorted_ms"] / result["cold_unsorted_ms"]
    return result


# ---- the parent -------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=250_000, help="synthetic images (64x64x3)")
    p.add_argument("--files", type=int, default=8, help=".npz batch files to write")
    p.add_argument("--steps", type=int, default=50, help="timed training steps per variant")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--width", type=int, default=8, help="model_channels of the tiny UNet")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the children")
    p.add_argument("--baseline-images", type=int, default=20_000, help="in-RAM baseline size")
    p.add_argument("--draws", type=int, default=200, help="batches in the locality test")
    p.add_argument("--tmp", default=None, help="folder for the temporary data (default: TMP)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--child-data", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not args.child:
        print(json.dumps(run(args), indent=2))
        return
    kind, path = args.child
    if kind == "write":
        result = child_write(path, args.images, args.files)
    elif kind == "prepare":
        result = child_prepare(path, args.child_data)
    else:
        child = {"train": child_train, "compare": child_compare, "locality": child_locality}
        result = child[kind](path, args)
    print(json.dumps(result))


def run(args: argparse.Namespace) -> dict:
    """The parent: imports neither torch nor iddpm, so its own peak stays small."""
    result: dict[str, object] = {
        "benchmark": "bench_mmap_data",
        "device": "cpu",
        "threads": args.threads,
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
        "images": args.images,
        "data_gb": round(args.images * ROW / 1e9, 2),
    }
    tmp = Path(tempfile.mkdtemp(prefix="iddpm-mmap-", dir=args.tmp))
    need = 2 * args.images * ROW + (64 << 20)  # the .npz batches and the prepared copy
    free = shutil.disk_usage(tmp).free
    result["free_disk_gb"] = round(free / 1e9, 1)
    if free < need:
        shutil.rmtree(tmp)
        result["skipped"] = f"needs {need / 1e9:.1f} GB free in {tmp.parent}; pass --tmp DIR"
        return result
    skip = ("child", "child_data", "tmp")
    opts = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in skip]
    npz, data = tmp / "npz", tmp / "prepared"
    try:
        out, _ = _run_child(["--child", "write", str(npz), *opts])
        result.update(out)
        out, rss = _run_child(["--child", "prepare", str(npz), f"--child-data={data}", *opts])
        result["prepare"] = {**out, "ru_maxrss_mb": rss}
        shutil.rmtree(npz)
        out, rss = _run_child(["--child", "train", str(data), *opts])
        result["train_mmap"] = {**out, "ru_maxrss_mb": rss}
        result["target_peak_rss_le_1gb"] = max(rss, out["vm_hwm_mb"]) <= 1024
        result["compare"], _ = _run_child(["--child", "compare", str(data), *opts])
        result["locality"], _ = _run_child(["--child", "locality", str(data), *opts])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["parent_vm_hwm_mb"] = _vm_hwm_mb()
    result["loadavg_1min_at_end"] = round(os.getloadavg()[0], 2)
    return result


if __name__ == "__main__":
    main()
