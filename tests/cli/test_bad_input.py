"""The bad-input matrix: every command against broken files, paths and options, in process.

Each case builds its inputs in a fresh folder (the working directory), hashes the whole
folder, runs the command and asserts the contract of `_contract.py`: exit code, one line
that says what to do, no traceback, no file changed and none added.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from _contract import TINY_TRAIN, check_failure, check_unchanged, invoke, tree_state
from PIL import Image

FIXTURE = Path(__file__).parents[1] / "fixtures" / "improved_diffusion_unet.npz"


class Evil:
    """A pickle that would create the file `pwned` when loaded without weights_only."""

    def __reduce__(self):
        return (open, ("pwned", "w"))


@dataclass(frozen=True)
class Templates:
    run: Path  # a trained tiny run: config.json, checkpoints 1 and 2, metrics.jsonl
    reference: Path  # an openai/improved-diffusion state dict (.pt)
    samples: Path  # uint8 [4, 8, 8, 1] under arr_0


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> Templates:
    root = tmp_path_factory.mktemp("templates")
    result = invoke(["train", *TINY_TRAIN, "--run-dir", root / "run"])
    assert result.exit_code == 0, result.output + result.stderr
    data = np.load(FIXTURE)
    keys = json.loads(str(data["tiny.state_dict_keys"]))
    torch.save({k: torch.from_numpy(data[f"tiny.sd.{k}"]) for k in keys}, root / "ref.pt")
    rng = np.random.default_rng(0)
    np.savez(root / "s.npz", arr_0=rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8))
    return Templates(root / "run", root / "ref.pt", root / "s.npz")


Setup = Callable[[Path, Templates], list]
CASES: dict[str, tuple[Setup, int, str | None, tuple]] = {}


def case(name: str, hint: str | None = None, code: int = 2, marks: tuple = ()):
    """Register a case: setup(tmp, templates) builds the inputs and returns the args."""

    def register(setup: Setup) -> Setup:
        CASES[name] = (setup, code, hint, marks)
        return setup

    return register


def run_copy(tmp: Path, t: Templates) -> Path:
    shutil.copytree(t.run, tmp / "run")
    return tmp / "run"


def latest(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def a_file(tmp: Path) -> Path:
    return write(tmp / "afile", b"not a folder\n")


def tampered(tmp: Path, t: Templates, edit: Callable[[dict], None]) -> Path:
    """A copy of the run whose latest checkpoint was loaded, edited and saved again."""
    run = run_copy(tmp, t)
    state = torch.load(latest(run), weights_only=True)
    edit(state)
    torch.save(state, latest(run))
    return run


SAMPLE = ["--num", "2", "--steps", "5"]
DEMO = ["demo", "--run-dir", "d", "--minutes", "0.01", "--max-steps", "1", "--num-samples", "2"]


# ---- missing paths ---------------------------------------------------------------------
case("sample: missing checkpoint", "pass a .pt file or a run directory")(
    lambda tmp, t: ["sample", "nowhere"]
)
case("nll: missing checkpoint", "nowhere")(lambda tmp, t: ["nll", "nowhere"])
case("sweep: missing checkpoint", "nowhere")(lambda tmp, t: ["sweep", "nowhere"])
case("fid: missing samples", "missing.npz")(
    lambda tmp, t: ["fid", "missing.npz", "--ref", "digits"]
)
case("fid: missing reference", "nowhere.npz")(
    lambda tmp, t: ["fid", shutil.copy(t.samples, tmp), "--ref", "nowhere.npz"]
)
case("train: missing data folder", "no/such/dir")(
    lambda tmp, t: ["train", *TINY_TRAIN, "--data", "no/such/dir"]
)
case("train: missing --config", "nope.json")(
    lambda tmp, t: ["train", "--config", "nope.json", "--run-dir", "r"]
)
case("convert: missing reference", "nope.pt")(
    lambda tmp, t: ["convert", "nope.pt", "--image-size", "8", "--run-dir", "out"]
)
case("train --resume: no run there", "--resume")(
    lambda tmp, t: ["train", "--resume", "--run-dir", "empty"]
)


# ---- images and npz layouts ------------------------------------------------------------
@case("train: corrupt PNG", "broken.png")
def _(tmp, t):
    write(tmp / "imgs" / "broken.png", b"not a png")
    return ["train", *TINY_TRAIN, "--data", "imgs", "--run-dir", "r"]


@case("train: mixed good and corrupt images", "b.jpg")
def _(tmp, t):
    (tmp / "imgs" / "sub").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp / "imgs" / "a.png")
    Image.new("RGB", (12, 10)).save(tmp / "imgs" / "sub" / "c.png")
    write(tmp / "imgs" / "b.jpg", Image.new("RGB", (8, 8)).tobytes())  # raw bytes, no JPEG
    return ["train", *TINY_TRAIN, "--data", "imgs", "--run-dir", "r"]


@case("train: empty image folder", "no images")
def _(tmp, t):
    (tmp / "imgs").mkdir()
    return ["train", *TINY_TRAIN, "--data", "imgs", "--run-dir", "r"]


def npz_case(name: str, hint: str, arrays: dict, marks: tuple = ()) -> None:
    def setup(tmp, t):
        np.savez(tmp / "d.npz", **arrays)
        return ["train", *TINY_TRAIN, "--data", "d.npz", "--run-dir", "r"]

    case(name, hint, marks=marks)(setup)


npz_case("train: float npz", "uint8", {"arr_0": np.zeros((4, 8, 8, 1), np.float32)})
npz_case("train: npz without images", "store uint8 images", {"foo": np.zeros(3, np.uint8)})
npz_case(
    "train: npz of rows", "expected uint8 [N, H, W, C]", {"arr_0": np.zeros((4, 64), np.uint8)}
)
npz_case("train: npz NCHW", "transpose", {"arr_0": np.zeros((4, 1, 8, 8), np.uint8)})


@case("train: truncated npz", "d.npz")
def _(tmp, t):
    np.savez(tmp / "full.npz", arr_0=np.zeros((64, 8, 8, 1), np.uint8))
    data = (tmp / "full.npz").read_bytes()
    (tmp / "full.npz").unlink()
    write(tmp / "d.npz", data[: len(data) // 2])
    return ["train", *TINY_TRAIN, "--data", "d.npz", "--run-dir", "r"]


@case("train: random bytes as npz", "d.npz")
def _(tmp, t):
    write(tmp / "d.npz", random.Random(0).randbytes(2000))
    return ["train", *TINY_TRAIN, "--data", "d.npz", "--run-dir", "r"]


@case("fid: float samples", "uint8")
def _(tmp, t):
    np.savez(tmp / "bad.npz", arr_0=np.zeros((2, 8, 8, 1), np.float32))
    return ["fid", "bad.npz", "--ref", "digits"]


@case("fid: truncated samples", "bad.npz")
def _(tmp, t):
    write(tmp / "bad.npz", t.samples.read_bytes()[:300])
    return ["fid", "bad.npz", "--ref", "digits"]


# ---- step specs, samplers, options -----------------------------------------------------
case("sample: more steps than T", "30")(
    lambda tmp, t: ["sample", run_copy(tmp, t), "--num", "2", "--steps", "30"]
)
case("sample: step spec not a number", "abc")(
    lambda tmp, t: ["sample", run_copy(tmp, t), "--num", "2", "--steps", "abc"]
)
case("sample: ddim0", "ddim0")(
    lambda tmp, t: ["sample", run_copy(tmp, t), "--num", "2", "--steps", "ddim0"]
)
case("nll: more steps than T", "30")(lambda tmp, t: ["nll", run_copy(tmp, t), "--steps", "30"])
case("sweep: more steps than T", "30")(lambda tmp, t: ["sweep", run_copy(tmp, t), "--steps", "30"])
case("sample: unknown sampler", "nope")(
    lambda tmp, t: ["sample", run_copy(tmp, t), *SAMPLE, "--sampler", "nope"]
)
case("sample: --eta without ddim", "--eta")(
    lambda tmp, t: ["sample", run_copy(tmp, t), *SAMPLE, "--eta", "0.5"]
)
case("sweep: option no sampler takes", "--eta")(
    lambda tmp, t: ["sweep", run_copy(tmp, t), "--samplers", "ancestral", "--eta", "0.5"]
)
case("sample: --num 0 (usage)", "--num")(lambda tmp, t: ["sample", run_copy(tmp, t), "--num", "0"])
case("nll: unknown split (usage)", "--split")(
    lambda tmp, t: ["nll", run_copy(tmp, t), "--split", "validation"]
)
case("train: unknown preset", "choose one of")(lambda tmp, t: ["train", "--preset", "cifar"])
case("train: unknown schedule (usage)", "--schedule")(
    lambda tmp, t: ["train", "--schedule", "quadratic"]
)
case("train: --batch-size 0 names the flag", "--batch-size")(
    lambda tmp, t: ["train", *TINY_TRAIN, "--batch-size", "0", "--run-dir", "r"]
)
case("train: batch not divisible by microbatch", "--microbatch")(
    lambda tmp, t: ["train", *TINY_TRAIN, "--batch-size", "6", "--microbatch", "4"]
)
case("train: --num-classes without --class-cond", "--class-cond")(
    lambda tmp, t: ["train", *TINY_TRAIN, "--num-classes", "10", "--run-dir", "r"]
)
case("fid: inception without its package", "pip install")(
    lambda tmp, t: [
        "fid",
        shutil.copy(t.samples, tmp),
        "--ref",
        "digits",
        "--features",
        "inception",
    ]
)


case("train: --precision fp16 on the CPU", "--precision")(
    lambda tmp, t: ["train", *TINY_TRAIN, "--precision", "fp16", "--device", "cpu"]
)
case("train: --steps 0", "--steps")(lambda tmp, t: ["train", *TINY_TRAIN, "--steps", "0"])
case("train: negative --lr", "--lr")(lambda tmp, t: ["train", *TINY_TRAIN, "--lr", "-1"])
case("train: --channel-mult not numbers (usage)", "--channel-mult")(
    lambda tmp, t: ["train", *TINY_TRAIN, "--channel-mult", "a,b"]
)
case("train: --max-minutes 0 (usage)", "--max-minutes")(
    lambda tmp, t: ["train", *TINY_TRAIN, "--max-minutes", "0"]
)
case("train: cifar10 folder missing", "nowhere")(
    lambda tmp, t: ["train", *TINY_TRAIN, "--data", "cifar10:nowhere"]
)
case("train --resume: --run-dir is a file", "afile")(
    lambda tmp, t: ["train", "--resume", "--run-dir", a_file(tmp)]
)
case("sample: --class for an unconditional model", "--class")(
    lambda tmp, t: ["sample", run_copy(tmp, t), *SAMPLE, "--class", "3"]
)
case("sweep: unknown sampler", "nope")(
    lambda tmp, t: ["sweep", run_copy(tmp, t), "--samplers", "nope"]
)
case("sweep: --nfe not numbers", "abc")(lambda tmp, t: ["sweep", run_copy(tmp, t), "--nfe", "abc"])
case("nll: float npz as --data", "uint8")(
    lambda tmp, t: [
        "nll",
        run_copy(tmp, t),
        "--data",
        np.savez(tmp / "f.npz", arr_0=np.zeros((2, 8, 8, 1), np.float32)) or "f.npz",
    ]
)
case("nll: data unlike the model's", "channel")(
    lambda tmp, t: [
        "nll",
        run_copy(tmp, t),
        "--data",
        np.savez(tmp / "b.npz", arr_0=np.zeros((2, 16, 16, 3), np.uint8)) or "b.npz",
    ]
)


@case("fid: truncated --ref statistics", "ref.npz")
def _(tmp, t):
    np.savez(tmp / "full.npz", mu=np.zeros(64), sigma=np.eye(64))
    write(tmp / "ref.npz", (tmp / "full.npz").read_bytes()[:500])
    (tmp / "full.npz").unlink()
    return ["fid", shutil.copy(t.samples, tmp), "--ref", "ref.npz"]


@case("fid: --ref statistics of other features", "--features")
def _(tmp, t):
    np.savez(tmp / "ref.npz", mu=np.zeros(5), sigma=np.eye(5))
    return ["fid", shutil.copy(t.samples, tmp), "--ref", "ref.npz"]


case("fid: --save-ref is the samples file", "--save-ref")(
    lambda tmp, t: [
        "fid",
        shutil.copy(t.samples, tmp),
        "--ref",
        "digits",
        "--save-ref",
        tmp / "s.npz",
    ]
)


@case("fid: --ref sums of the wrong shape", "outer_sum")
def _(tmp, t):
    np.savez(tmp / "ref.npz", feature_sum=np.zeros(64), outer_sum=np.eye(63), count=9)
    return ["fid", shutil.copy(t.samples, tmp), "--ref", "ref.npz"]


@case("fid: --ref mu/sigma of the wrong shape", "sigma")
def _(tmp, t):
    np.savez(tmp / "ref.npz", mu=np.zeros(64), sigma=np.eye(63))
    return ["fid", shutil.copy(t.samples, tmp), "--ref", "ref.npz"]


@case("fid: --ref statistics holding NaN", "NaN")
def _(tmp, t):
    np.savez(tmp / "ref.npz", mu=np.full(64, np.nan), sigma=np.eye(64))
    return ["fid", shutil.copy(t.samples, tmp), "--ref", "ref.npz"]


@case("fid: empty image folder", "no images")
def _(tmp, t):
    (tmp / "imgs").mkdir()
    return ["fid", tmp / "imgs", "--ref", "digits"]


@case("fid: image folder of mixed sizes", "different sizes")
def _(tmp, t):
    (tmp / "imgs").mkdir()
    Image.new("L", (8, 8)).save(tmp / "imgs" / "a.png")
    Image.new("L", (12, 10)).save(tmp / "imgs" / "b.png")
    return ["fid", tmp / "imgs", "--ref", "digits"]


@case("fid: --ref batch with neither images nor statistics", "neither images")
def _(tmp, t):
    np.savez(tmp / "ref.npz", labels=np.zeros(3))
    return ["fid", shutil.copy(t.samples, tmp), "--ref", "ref.npz"]


case("fid: --bootstrap 0", "--bootstrap")(
    lambda tmp, t: ["fid", shutil.copy(t.samples, tmp), "--ref", "digits", "--bootstrap", "0"]
)
case("fid: negative --bootstrap", "--bootstrap")(
    lambda tmp, t: ["fid", shutil.copy(t.samples, tmp), "--ref", "digits", "--bootstrap", "-2"]
)


@case("fid: --job-dir of another request", "shard_size")
def _(tmp, t):
    job = {"format": "iddpm-job", "format_version": 1, "kind": "fid-features", "total": 4,
           "shard_size": 3, "fields": {}}  # fmt: skip
    (tmp / "job" / "samples").mkdir(parents=True)
    (tmp / "job" / "samples" / "manifest.json").write_text(json.dumps(job))
    return ["fid", shutil.copy(t.samples, tmp), "--ref", "digits", "--job-dir", "job"]


@case("fid: incomplete sample job folder", "incomplete")
def _(tmp, t):
    job = {"format": "iddpm-job", "format_version": 1, "kind": "sample", "total": 4,
           "shard_size": 2, "fields": {"seed": 0}}  # fmt: skip
    (tmp / "job").mkdir()
    (tmp / "job" / "manifest.json").write_text(json.dumps(job))
    return ["fid", "job", "--ref", "digits"]


@case("compare: sets of different sizes", "one size")
def _(tmp, t):
    np.savez(tmp / "a.npz", arr_0=np.zeros((6, 8, 8, 1), np.uint8))
    np.savez(tmp / "b.npz", arr_0=np.zeros((5, 8, 8, 1), np.uint8))
    return ["compare", "a.npz", "b.npz", "--ref", "digits"]


@case("compare: sets of different seeds", "--seed")
def _(tmp, t):
    for name, seed in (("a", 0), ("b", 1)):
        np.savez(tmp / f"{name}.npz", arr_0=np.zeros((6, 8, 8, 1), np.uint8))
        (tmp / f"{name}.json").write_text(json.dumps({"seed": seed}))
    return ["compare", "a.npz", "b.npz", "--ref", "digits"]


case("compare: --bootstrap 0", "--bootstrap")(
    lambda tmp, t: ["compare", shutil.copy(t.samples, tmp), "s.npz", "--bootstrap", "0"]
)


@case("export: output folder not empty", "not empty")
def _(tmp, t):
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("mine")
    return ["export", shutil.copy(t.samples, tmp), "out"]


def foreign_job(tmp: Path, kind: str, total: int, shard_size: int) -> Path:
    """A job folder whose manifest records another request (seed 99)."""
    manifest = {"format": "iddpm-job", "format_version": 1, "kind": kind, "total": total,
                "shard_size": shard_size, "fields": {"seed": 99}}  # fmt: skip
    (tmp / "job").mkdir()
    (tmp / "job" / "manifest.json").write_text(json.dumps(manifest))
    return tmp / "job"


case("sample: --job-dir of another request", "started with")(
    lambda tmp, t: [
        "sample",
        run_copy(tmp, t),
        *SAMPLE,
        "--shard-size",
        "1000",
        "--job-dir",
        foreign_job(tmp, "sample", 2, 1000),
    ]
)
case("nll: --job-dir of another request", "started with")(
    lambda tmp, t: [
        "nll",
        run_copy(tmp, t),
        "--num-images",
        "2",
        "--job-dir",
        foreign_job(tmp, "nll", 2, 1000),
    ]
)


@case("fid: --ref images the extractor cannot read", "8, 8, 1")
def _(tmp, t):
    np.savez(tmp / "ref.npz", arr_0=np.zeros((5, 16, 16, 3), np.uint8))
    return ["fid", shutil.copy(t.samples, tmp), "--ref", "ref.npz"]


case("demo: --nll-images -1", "--nll-images")(lambda tmp, t: [*DEMO, "--nll-images", "-1"])


# ---- devices ---------------------------------------------------------------------------
case("train: --device garbage", "--device")(
    lambda tmp, t: ["train", *TINY_TRAIN, "--device", "garbage", "--run-dir", "r"]
)
case("sample: --device garbage", "--device")(
    lambda tmp, t: ["sample", run_copy(tmp, t), *SAMPLE, "--device", "garbage"]
)
case("nll: --device on a missing GPU", "--device")(
    lambda tmp, t: ["nll", run_copy(tmp, t), "--device", "cuda:7"]
)


# ---- output paths that cannot be written -----------------------------------------------
case("train: --run-dir is a file", "afile")(
    lambda tmp, t: ["train", *TINY_TRAIN, "--run-dir", a_file(tmp)]
)
case("train: --run-dir under a file", "afile")(
    lambda tmp, t: ["train", *TINY_TRAIN, "--run-dir", a_file(tmp) / "run"]
)
case("sample: --out under a file", "afile")(
    lambda tmp, t: ["sample", run_copy(tmp, t), *SAMPLE, "--out", a_file(tmp) / "s.npz"]
)
case("sample: --out is a folder", "--out")(
    lambda tmp, t: ["sample", run_copy(tmp, t), *SAMPLE, "--out", tmp]
)
case("sample: --grid under a file", "afile")(
    lambda tmp, t: ["sample", run_copy(tmp, t), *SAMPLE, "--grid", a_file(tmp) / "g.png"]
)
case("nll: --out-dir is a file", "afile")(
    lambda tmp, t: ["nll", run_copy(tmp, t), "--out-dir", a_file(tmp)]
)
case("nll: --out-dir under a file", "afile")(
    lambda tmp, t: ["nll", run_copy(tmp, t), "--out-dir", a_file(tmp) / "x"]
)
case("fid: --save-ref under a file", "afile")(
    lambda tmp, t: [
        "fid",
        shutil.copy(t.samples, tmp),
        "--ref",
        "digits",
        "--save-ref",
        a_file(tmp) / "r.npz",
    ]
)
case("sweep: --out-dir under a file", "afile")(
    lambda tmp, t: ["sweep", run_copy(tmp, t), "--steps", "5", "--out-dir", a_file(tmp) / "x"]
)


# ---- damaged and foreign checkpoints for sampling --------------------------------------
@case("sample: truncated checkpoint", "step_00000002.pt")
def _(tmp, t):
    run = run_copy(tmp, t)
    latest(run).write_bytes(latest(run).read_bytes()[:5000])
    return ["sample", run, *SAMPLE]


@case("sample: zero-byte checkpoint", "step_00000002.pt")
def _(tmp, t):
    run = run_copy(tmp, t)
    latest(run).write_bytes(b"")
    return ["sample", run, *SAMPLE]


@case("sample: malicious checkpoint", "step_00000002.pt")
def _(tmp, t):
    run = run_copy(tmp, t)
    torch.save({"model": Evil(), "format_version": 1}, latest(run))
    return ["sample", run, *SAMPLE]


case("nll: malicious checkpoint", "evil.pt")(
    lambda tmp, t: ["nll", torch.save({"x": Evil()}, tmp / "evil.pt") or tmp / "evil.pt"]
)
case("sample: weights do not fit the config", "config")(
    lambda tmp, t: [
        "sample",
        tampered(tmp, t, lambda s: s["config"]["model"].update(model_channels=64)),
        *SAMPLE,
    ]
)
case("sample: no model entry", "no model weights")(
    lambda tmp, t: ["sample", tampered(tmp, t, lambda s: s.pop("model")), *SAMPLE]
)
case("sample: config missing", "config")(
    lambda tmp, t: ["sample", tampered(tmp, t, lambda s: s.pop("config")), *SAMPLE]
)
case("sample: newer format version", "format_version")(
    lambda tmp, t: ["sample", tampered(tmp, t, lambda s: s.update(format_version=99)), *SAMPLE]
)
case("sample: a reference checkpoint", "iddpm convert")(
    lambda tmp, t: ["sample", shutil.copy(t.reference, tmp), *SAMPLE]
)


def ema_tensor(state: dict) -> None:
    state["ema"] = torch.zeros(3)  # a tensor where {rate: weights} belongs


case("sample: EMA entry is a tensor", "EMA entry is a Tensor")(
    lambda tmp, t: ["sample", tampered(tmp, t, ema_tensor), *SAMPLE]
)
case("sample: EMA rate holds a tensor", "EMA entry '0.99'")(
    lambda tmp, t: [
        "sample",
        tampered(tmp, t, lambda s: s["ema"].update({"0.99": torch.ones(1)})),
        *SAMPLE,
    ]
)
case("train --init-from: EMA entry is a tensor", "EMA entry is a Tensor")(
    lambda tmp, t: [
        "train",
        *TINY_TRAIN,
        *("--run-dir", tmp / "new", "--init-from", tampered(tmp, t, ema_tensor)),
    ]
)
case("sweep: --samplers ''", "--samplers")(
    lambda tmp, t: ["sweep", run_copy(tmp, t), "--samplers", "", "--num", "2"]
)


# ---- training: resume, existing runs, conflicting options ------------------------------
case("train: into an existing run", "--resume")(
    lambda tmp, t: ["train", *TINY_TRAIN, "--run-dir", run_copy(tmp, t)]
)
case("train --resume: changed model channels", "model_channels")(
    lambda tmp, t: ["train", "--resume", "--run-dir", run_copy(tmp, t), "--model-channels", "64"]
)
case("train --resume: changed T", "num_timesteps")(
    lambda tmp, t: ["train", "--resume", "--run-dir", run_copy(tmp, t), "--diffusion-steps", "50"]
)
case("train --resume with --config", "--config")(
    lambda tmp, t: ["train", "--resume", "--run-dir", run_copy(tmp, t), "--config", "nope.json"]
)
case("train --resume with --preset", "--preset")(
    lambda tmp, t: ["train", "--resume", "--run-dir", run_copy(tmp, t), "--preset", "cifar10"]
)


def damaged_latest(name: str, data: Callable[[bytes], bytes]) -> None:
    def setup(tmp, t):
        run = run_copy(tmp, t)
        latest(run).write_bytes(data(latest(run).read_bytes()))
        return ["train", "--resume", "--run-dir", run, "--steps", "4"]

    case(f"train --resume: {name} latest checkpoint", "step_00000002.pt")(setup)


damaged_latest("truncated", lambda b: b[: len(b) // 2])
damaged_latest("zero-byte", lambda b: b"")
damaged_latest("random-bytes", lambda b: random.Random(2).randbytes(len(b)))


@case("train --resume: malicious latest checkpoint", "step_00000002.pt")
def _(tmp, t):
    run = run_copy(tmp, t)
    torch.save({"model": Evil(), "format_version": 1}, latest(run))
    return ["train", "--resume", "--run-dir", run, "--steps", "4"]


@case("train --resume: only a temp file in checkpoints/", "without --resume")
def _(tmp, t):
    run = run_copy(tmp, t)
    for f in (run / "checkpoints").iterdir():
        f.unlink()
    write(run / "checkpoints" / ".tmp-step_00000001.pt.123", b"partial")
    return ["train", "--resume", "--run-dir", run]


@case("train --resume: --init-from cannot apply to a resumed run", "drop --init-from")
def _(tmp, t):
    run = run_copy(tmp, t)
    return ["train", "--resume", "--run-dir", run, "--init-from", run]


@case("train: --init-from a file that is not a checkpoint", "not")
def _(tmp, t):
    write(tmp / "weights.pt", b"not a checkpoint at all")
    return ["train", "--run-dir", tmp / "new", "--init-from", tmp / "weights.pt", "--steps", "2"]


@case("prepare-data: existing output", "delete it")
def _(tmp, t):
    (tmp / "out").mkdir()
    return ["prepare-data", "digits", tmp / "out"]


@case("prepare-data: missing source", "pass an existing")
def _(tmp, t):
    return ["prepare-data", tmp / "missing.npz", tmp / "out"]


@case("steps: K larger than T", "--nfe")
def _(tmp, t):
    return ["steps", run_copy(tmp, t), "--nfe", "5000"]


@case("sample: too few images for the analytic statistics", "--stats-images")
def _(tmp, t):
    return ["sample", run_copy(tmp, t), "--sampler", "analytic", "--stats-images", "5"]


@case("nll: unknown --sigma", "--sigma")
def _(tmp, t):
    return ["nll", run_copy(tmp, t), "--sigma", "learned"]


@case("train --resume: corrupt config.json", "step_00000002.pt")
def _(tmp, t):
    run = run_copy(tmp, t)
    (run / "config.json").write_text("{ not json")
    latest(run).write_bytes(b"")  # and a damaged checkpoint, so the command fails
    return ["train", "--resume", "--run-dir", run, "--steps", "4"]


@case("train: corrupt --config names the file", "bad.json")
def _(tmp, t):
    write(tmp / "bad.json", b"{ not json")
    return ["train", "--config", "bad.json", "--run-dir", "r"]


@case("train: --config of another program", "cfg.json")
def _(tmp, t):
    write(tmp / "cfg.json", b'{"model": {"depth": 3}}')
    return ["train", "--config", "cfg.json", "--run-dir", "r"]


# ---- convert ---------------------------------------------------------------------------
def convert_case(name: str, hint: str, make: Callable[[Path, Templates], Path]) -> None:
    case(f"convert: {name}", hint)(
        lambda tmp, t: [
            "convert",
            make(tmp, t),
            "--image-size",
            "8",
            "--num-heads",
            "2",
            "--run-dir",
            "out",
        ]
    )


convert_case(
    "random bytes",
    "model.pt",
    lambda tmp, t: write(tmp / "model.pt", random.Random(1).randbytes(4096)),
)
convert_case(
    "truncated file",
    "model.pt",
    lambda tmp, t: write(tmp / "model.pt", t.reference.read_bytes()[:20000]),
)
convert_case(
    "malicious pickle",
    "could run code",
    lambda tmp, t: torch.save({"w": Evil()}, tmp / "model.pt") or tmp / "model.pt",
)
convert_case("an iddpm checkpoint", "needs no conversion", lambda tmp, t: latest(run_copy(tmp, t)))
convert_case(
    "an iddpm checkpoint without its format_version",
    "needs no conversion",
    lambda tmp, t: latest(tampered(tmp, t, lambda s: s.pop("format_version"))),
)
convert_case("a directory", "folder", lambda tmp, t: run_copy(tmp, t))
convert_case(
    "a list, not a state dict",
    "model.pt",
    lambda tmp, t: torch.save([torch.zeros(2)], tmp / "model.pt") or tmp / "model.pt",
)
case("convert: --run-dir holds a run", "--overwrite")(
    lambda tmp, t: [
        "convert",
        shutil.copy(t.reference, tmp),
        "--image-size",
        "8",
        "--num-heads",
        "2",
        "--run-dir",
        run_copy(tmp, t),
    ]
)
case("convert: wrong --num-heads", "--num-heads")(
    lambda tmp, t: [
        "convert",
        shutil.copy(t.reference, tmp),
        "--image-size",
        "8",
        "--num-heads",
        "3",
        "--run-dir",
        "out",
    ]
)


# ---- demo: every option checked before it trains ---------------------------------------
case("demo: --run-dir holds a run", "choose another")(
    lambda tmp, t: [*DEMO, "--run-dir", run_copy(tmp, t)]
)
case("demo: --minutes -1", "--minutes")(lambda tmp, t: [*DEMO, "--minutes", "-1"])
case("demo: --num-samples 0", "--num-samples")(lambda tmp, t: [*DEMO, "--num-samples", "0"])
case("demo: bad --sample-steps", "abc")(lambda tmp, t: [*DEMO, "--sample-steps", "abc"])
case("demo: unknown sampler", "nope")(lambda tmp, t: [*DEMO, "--sampler", "nope"])
case("demo: --eta without ddim", "--eta")(lambda tmp, t: [*DEMO, "--eta", "0.3"])


@pytest.mark.parametrize("name", [pytest.param(k, marks=v[3]) for k, v in CASES.items()])
def test_bad_input(name: str, templates: Templates, tmp_path: Path, monkeypatch) -> None:
    setup, code, hint, _ = CASES[name]
    monkeypatch.chdir(tmp_path)
    args = setup(tmp_path, templates)
    before = tree_state(tmp_path)
    result = invoke(args)
    after = tree_state(tmp_path)
    check_failure(result, code, hint)
    check_unchanged(before, after)
