"""Resumable sharded jobs (sample, nll, fid): a resumed job gives the uninterrupted run's
bytes, whatever was lost, and also on another number of ranks; nothing appears outside
the job folder before the job is complete; a request that differs is refused by field."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from iddpm.config import EvalConfig, SampleConfig
from iddpm.shards import ShardedJob
from iddpm.workflows.nll import NllJob, nll_to_files
from iddpm.workflows.sample import SampleJob, sample_to_files

SAMPLE = SampleConfig(num=10, steps="4", batch_size=3, seed=5)


def _sample(run: Path, out: Path, **kw) -> dict:
    return sample_to_files(SampleJob(run, kw.pop("cfg", SAMPLE), out, shard_size=4, **kw))


def test_sample_resumes_lost_and_damaged_shards_to_the_same_bytes(random_run, tmp_path):
    run, _ = random_run
    _sample(run, tmp_path / "whole.npz")
    job = tmp_path / "job"
    _sample(run, tmp_path / "a.npz", job_dir=job)
    assert sorted(p.name for p in job.iterdir()) == [
        "manifest.json", "shard-00000.npz", "shard-00001.npz", "shard-00002.npz"
    ]  # fmt: skip
    (job / "shard-00001.npz").unlink()
    (job / "shard-00002.npz").write_bytes(b"PK\x03\x04 not a shard")
    _sample(run, tmp_path / "b.npz", job_dir=job)
    whole = (tmp_path / "whole.npz").read_bytes()
    assert (tmp_path / "a.npz").read_bytes() == whole == (tmp_path / "b.npz").read_bytes()
    assert not (tmp_path / "whole.job").exists()  # the default job folder goes when done


def test_an_interrupted_sample_job_writes_nothing_outside_its_folder(
    random_run, tmp_path, monkeypatch
):
    run, _ = random_run
    real_write = ShardedJob.write

    def write_then_stop(self, k, arrays):
        if k == 1:
            raise KeyboardInterrupt
        return real_write(self, k, arrays)

    monkeypatch.setattr(ShardedJob, "write", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _sample(run, tmp_path / "s.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "s.job"]
    assert sorted(p.name for p in (tmp_path / "s.job").iterdir()) == [
        "manifest.json", "shard-00000.npz"
    ]  # fmt: skip
    monkeypatch.setattr(ShardedJob, "write", real_write)
    _sample(run, tmp_path / "s.npz")
    _sample(run, tmp_path / "whole.npz")
    assert (tmp_path / "s.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()
    assert not (tmp_path / "s.job").exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [({"seed": 6}, "seed"), ({"sampler": "ddim"}, "sampler"), ({"steps": "5"}, "steps")],
)
def test_a_sample_job_folder_of_another_request_is_refused(random_run, tmp_path, change, field):
    run, _ = random_run
    _sample(run, tmp_path / "a.npz", job_dir=tmp_path / "job")
    with pytest.raises(ValueError, match=f"started with {field} = "):
        _sample(run, tmp_path / "b.npz", job_dir=tmp_path / "job", cfg=SAMPLE.replace(**change))
    assert not (tmp_path / "b.npz").exists()


@pytest.mark.slow  # two bounds and their plots: ~6 s
def test_nll_resumes_to_the_same_bytes(random_run, tmp_path):
    run, _ = random_run
    cfg = EvalConfig(num_images=6, batch_size=2, steps="4")
    job = tmp_path / "job"
    whole = nll_to_files(NllJob(run, cfg, tmp_path / "whole", shard_size=3, job_dir=job))
    (job / "shard-00000.npz").unlink()
    again = nll_to_files(NllJob(run, cfg, tmp_path / "b", shard_size=3, job_dir=job))
    name = Path(whole["per_image"]).name
    assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert again["bpd"] == whole["bpd"] and again["bpd_stderr"] == whole["bpd_stderr"]
    csv = Path(whole["terms_csv"]).name
    assert (tmp_path / "b" / csv).read_bytes() == (tmp_path / "whole" / csv).read_bytes()
    with pytest.raises(ValueError, match="started with seed = "):
        nll_to_files(NllJob(run, cfg.replace(seed=1), tmp_path / "c", shard_size=3, job_dir=job))


# ---- other world sizes and kill -9: real processes ----------------------------------
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# torchrun's own parser would take `--num` for its `--numa-binding`: the arguments travel
# in the environment to this launcher instead
LAUNCHER = "import json, os, sys\nsys.argv = ['iddpm', *json.loads(os.environ['IDDPM_ARGS'])]\n" \
    "from iddpm.cli import main\nmain()\n"  # fmt: skip


def _iddpm(args: list, ranks: int = 1) -> subprocess.Popen:
    env = {**ENV, "IDDPM_ARGS": json.dumps([str(a) for a in args])}
    launch = [sys.executable, "-c", LAUNCHER]
    if ranks > 1:
        script = Path(env.get("TMPDIR", "/tmp")) / f"iddpm_launch_{os.getpid()}.py"
        script.write_text(LAUNCHER)
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  "--nproc_per_node", str(ranks), str(script)]  # fmt: skip
    return subprocess.Popen(launch, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _ok(args: list, ranks: int = 1) -> None:
    proc = _iddpm(args, ranks)
    _, err = proc.communicate(timeout=300)
    text = err.decode()
    assert proc.returncode == 0, "\n".join(
        line for line in text.splitlines() if "iddpm" in line or "Error" in line
    )[-3000:]


@pytest.mark.slow
def test_one_rank_and_two_gloo_ranks_and_a_resume_across_them_give_the_same_bytes(
    random_run, tmp_path
):
    """sample, nll and fid under 1 and 2 ranks; then a 1-rank job folder missing shards
    finished by 2 ranks."""
    run, _ = random_run
    images = np.random.default_rng(0).integers(0, 256, (30, 8, 8, 1), np.uint8)
    np.savez(tmp_path / "imgs.npz", arr_0=images)
    jobs = {
        "sample": (["sample", run, "--num", "10", "--steps", "4", "--batch-size", "3",
                    "--shard-size", "3"], "--out", "s.npz"),
        "nll": (["nll", run, "--num-images", "10", "--steps", "4", "--batch-size", "3",
                 "--shard-size", "3"], "--out-dir", "nll"),
        "fid": (["fid", tmp_path / "imgs.npz", "--ref", "digits", "--shard-size", "7"],
                "--out", "f.json"),
    }  # fmt: skip
    for name, (args, flag, target) in jobs.items():
        for ranks in (1, 2):
            _ok([*args, flag, tmp_path / f"{ranks}" / target], ranks)
        job = tmp_path / f"{name}.job"
        _ok([*args, flag, tmp_path / "r" / target, "--job-dir", job], 1)
        for shard in sorted(job.glob("shard-*"))[1::2]:
            shard.unlink()
        _ok([*args, flag, tmp_path / "resumed" / target, "--job-dir", job], 2)
        for folder in ("2", "resumed"):
            _same(tmp_path / "1" / target, tmp_path / folder / target)


VOLATILE = {"seconds", "images_per_s", "job_dir", "out", "grid", "terms_csv", "terms_plot",
            "per_image", "checkpoint", "samples"}  # fmt: skip


def _stable(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in VOLATILE}


def _same(a: Path, b: Path) -> None:
    files = [a] if a.is_file() else sorted(a.iterdir())
    for f in files:
        g = b / f.name if a.is_dir() else b
        if f.suffix == ".json":
            assert _stable(f) == _stable(g), f
        elif f.suffix != ".png":
            assert f.read_bytes() == g.read_bytes(), f


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_gives_the_same_bytes(random_run, tmp_path):
    """Three trials on `sample` (scripts/crash_trials_eval.py runs more, on every job)."""
    run, _ = random_run
    args = ["sample", run, "--num", "24", "--steps", "4", "--batch-size", "2", "--shard-size", "2"]
    _ok([*args, "--out", tmp_path / "ref" / "s.npz"])
    reference = (tmp_path / "ref" / "s.npz").read_bytes()
    rng = random.Random(0)
    for trial in range(3):
        out = tmp_path / f"t{trial}" / "s.npz"
        proc = _iddpm([*args, "--out", out])
        time.sleep(rng.uniform(2.0, 8.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        _ok([*args, "--out", out])
        assert out.read_bytes() == reference
        assert sorted(p.name for p in out.parent.iterdir()) == ["s.json", "s.npz", "s.png"]
