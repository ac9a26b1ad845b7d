"""A tiny run trained with every monitor on (evaluation, FID, importance sampling, grids,
TensorBoard), then `iddpm report` on it: every figure, the numbers, the audit; and the
error contract of `report` and of the new training flags."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from iddpm.config import DiffusionConfig, ExperimentConfig, TrainConfig, UNetConfig
from iddpm.workflows.run_report import ReportJob, run_report
from iddpm.workflows.statistics import StatsConfig
from iddpm.workflows.train import TrainJob, train

sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
from _contract import TINY_TRAIN, check_failure, check_unchanged, invoke, tree_state

T = 20


def tiny_config(**train: object) -> ExperimentConfig:
    return ExperimentConfig(
        diffusion=DiffusionConfig(num_timesteps=T, timestep_sampler="importance"),
        model=UNetConfig(
            image_size=8,
            in_channels=1,
            model_channels=8,
            num_res_blocks=1,
            attention_resolutions=(),
            channel_mult=(1,),
            num_heads=1,
            num_groups=4,
            dropout=0.0,
        ),
        train=TrainConfig(
            **{
                "data": "digits",
                "random_flip": False,
                "batch_size": 8,
                "lr": 1e-3,
                "ema_rates": (0.9,),
                "steps": 4,
                "log_every": 1,
                "checkpoint_every": 2,
                "sample_every": 2,
                "eval_every": 2,
                "eval_images": 8,
                "eval_timesteps": 2,
                "fid_every": 4,
                "fid_samples": 8,
                "fid_steps": "5",
                "precision": "fp32",
                **train,
            }
        ),
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tensorboardX")
    run = tmp_path_factory.mktemp("report") / "run"
    train(TrainJob(tiny_config(log="tensorboard"), run))
    return run


def records(path: Path) -> list[tuple[str, int, object]]:
    """(tag, step, value) of every summary value in a TensorBoard event file, read back
    from its TFRecord framing (u64 length, u32 crc, payload, u32 crc) with the protobuf
    tensorboardX writes."""
    from tensorboardX.proto import event_pb2

    out, data, pos = [], path.read_bytes(), 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
        for v in event.summary.value:
            kind = v.WhichOneof("value")
            value = {"simple_value": v.simple_value, "histo": v.histo, "image": v.image}[kind]
            out.append((v.tag, event.step, value))
    return out


@pytest.mark.slow  # the fixture trains a tiny run with every monitor on (~8 s)
def test_tensorboard_holds_every_scalar_p_t_and_the_grids(run: Path) -> None:
    (events,) = (run / "tensorboard").glob("events.out.tfevents.*")
    got = records(events)
    tags = {tag for tag, _, _ in got}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = {k for r in rows for k in r} & {"loss", "lr", "eval_heldout_bpd", "eval_v_q0"}
    want = {("train/" if k in ("loss", "lr") else "eval/") + k.removeprefix("eval_") for k in keys}
    assert len(keys) == 4
    assert want <= tags and "fid/fid" in tags and "train/p_t" in tags and "samples" in tags
    loss = {step: v for tag, step, v in got if tag == "train/loss"}
    assert loss == pytest.approx({r["step"]: r["loss"] for r in rows if "loss" in r}, rel=1e-6)
    histo = next(v for tag, _, v in got if tag == "train/p_t")
    assert sum(histo.bucket) == pytest.approx(1.0, abs=1e-6)  # p_t over buckets of t


@pytest.mark.slow  # matplotlib and the audit's network calls (~8 s)
def test_report_has_every_figure_the_numbers_and_the_audit(run: Path) -> None:
    out = run_report(ReportJob(run, stats=StatsConfig(num_images=100)))
    assert not out["skipped"], out["skipped"]
    text = Path(out["report"]).read_text()
    for caption in (
        "Training loss", "Held-out vs training bits/dim", "FID over training",
        "Importance sampler p_t", "Samples over training", "Where the bits are",
        "Learned-Σ audit",
    ):  # fmt: skip
        assert f"## {caption}" in text
    for png in out["figures"]:
        assert Path(png).parent == run / "report" and Path(png).stat().st_size > 1000
        assert f"]({Path(png).name})" in text  # linked relatively: the folder travels whole
    audit = json.loads((run / "report" / "sigma_audit.json").read_text())
    assert len(audit["learned"]) == len(audit["analytic"]) == T
    small, large = np.array(audit["small"]), np.array(audit["large"])
    learned = np.array(audit["learned"])  # learned range: between β̃ and β at every t > 0
    assert (learned[1:] >= small[1:] * (1 - 1e-6)).all()
    assert (learned[1:] <= large[1:] * (1 + 1e-6)).all()
    assert out["numbers"]["overfitting warnings"] == 0


def test_report_without_metrics_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    before = tree_state(tmp_path)
    result = invoke(["report", tmp_path / "run"])
    check_failure(result, 2, "metrics.jsonl")
    check_unchanged(before, tree_state(tmp_path))


@pytest.mark.parametrize(
    ("flags", "hint"),
    [
        (["--eval-every", "1", "--data", "d.npz"], "--eval-data"),
        (["--fid-every", "1", "--fid-sampler", "nope"], "nope"),
        (["--fid-every", "1", "--fid-steps", "abc"], "--fid-steps"),
        (["--keep-best", "--eval-every", "0"], "--eval-every"),
        (["--log", "tensorboard"], "iddpm[tensorboard]"),
    ],
)
def test_bad_monitoring_flags(
    flags: list[str], hint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "d.npz", arr_0=np.zeros((8, 8, 8, 1), np.uint8))
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if the extra were missing
    before = tree_state(tmp_path)
    result = invoke(["train", *TINY_TRAIN, *flags, "--run-dir", "r"])
    check_failure(result, 2, hint)
    check_unchanged(before, tree_state(tmp_path))


@pytest.mark.slow  # the exact bound of 8 images through the command line
def test_last_evaluation_agrees_with_iddpm_nll_on_the_same_checkpoint(run: Path) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if "eval_heldout_bpd" in r][-1]
    assert last["step"] == 4  # the run's last checkpoint: the same weights
    result = invoke(["nll", run, "--split", "test", "--num-images", "8", "--timestep-batch", "20"])
    assert result.exit_code == 0, result.stderr
    exact = json.loads(result.stdout.strip().splitlines()[-1])
    # the same 8 held-out images: only the Monte-Carlo noise separates the two
    assert abs(last["eval_heldout_bpd"] - exact["bpd"]) < 3 * last["eval_heldout_mc_se"]
