"""Checkpoints: atomic writes, the latest pointer, retention, safe loading, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from iddpm import checkpoint as ckpt
from iddpm.config import DiffusionConfig, ExperimentConfig, TrainConfig, UNetConfig


@pytest.fixture
def cfg() -> ExperimentConfig:
    return ExperimentConfig(
        diffusion=DiffusionConfig(num_timesteps=10),
        model=UNetConfig(image_size=8, in_channels=1, out_channels=2, model_channels=32),
        train=TrainConfig(ema_rates=(0.9, 0.999)),
    )


def _state(value: float) -> dict:
    return {
        "model": {"w": torch.full((2, 3), value), "buf": torch.arange(3)},
        "ema": {
            "0.9": {"w": torch.full((2, 3), value + 1)},
            "0.999": {"w": torch.full((2, 3), 7.0)},
        },
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0)}},
            "param_groups": [{"betas": (0.9, 0.99), "params": [0]}],
        },
        "sampler": {"history": torch.zeros(4, 2)},
        "data": {"epoch": 1, "position": None},
        "rng": {"torch_cpu": torch.get_rng_state()},
    }


def test_round_trip_is_weights_only_loadable(tmp_path: Path, cfg: ExperimentConfig) -> None:
    run = ckpt.run_dir(tmp_path / "run").create(cfg)
    path = ckpt.save_checkpoint(run, _state(1.5), cfg, step=20)
    raw = torch.load(path, weights_only=True)  # must not need any pickled class
    assert raw["format_version"] == ckpt.FORMAT_VERSION and raw["step"] == 20
    assert torch.equal(raw["model"]["w"], torch.full((2, 3), 1.5))
    assert raw["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert ckpt.checkpoint_config(raw) == cfg
    assert ExperimentConfig.from_dict(json.loads(run.config_path.read_text())) == cfg
    for d in (run.checkpoints, run.samples, run.plots):
        assert d.is_dir()


def test_latest_pointer_and_retention_keep_the_newest(tmp_path: Path, cfg) -> None:
    run = ckpt.run_dir(tmp_path)
    for step in (10, 20, 30, 40):
        ckpt.save_checkpoint(run, _state(step), cfg, step=step, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(run.checkpoints)] == [30, 40]
    assert (run.checkpoints / "latest").read_text().strip() == "step_00000040.pt"
    assert ckpt.load_checkpoint(tmp_path)["step"] == 40
    assert ckpt.load_checkpoint(run.checkpoints)["step"] == 40


def test_retention_never_deletes_the_checkpoint_latest_names(tmp_path: Path, cfg) -> None:
    # Resuming from an early checkpoint writes a step lower than files already there.
    run = ckpt.run_dir(tmp_path)
    for step in (100, 200):
        ckpt.save_checkpoint(run, _state(step), cfg, step=step, keep=2)
    ckpt.save_checkpoint(run, _state(5), cfg, step=50, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(run.checkpoints)] == [50, 200]
    assert ckpt.load_checkpoint(tmp_path)["step"] == 50


def test_stale_or_missing_latest_falls_back_to_highest_step(tmp_path: Path, cfg) -> None:
    run = ckpt.run_dir(tmp_path)
    for step in (1, 2):
        ckpt.save_checkpoint(run, _state(step), cfg, step=step)
    (run.checkpoints / "latest").write_text("step_99999999.pt\n")
    assert ckpt.resolve_checkpoint(tmp_path).name == "step_00000002.pt"
    (run.checkpoints / "latest").unlink()
    assert ckpt.resolve_checkpoint(tmp_path).name == "step_00000002.pt"


def test_failed_save_leaves_previous_checkpoint_and_latest_intact(
    tmp_path: Path, cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = ckpt.run_dir(tmp_path)
    good = ckpt.save_checkpoint(run, _state(1.0), cfg, step=10)
    before = good.read_bytes()
    real_save = torch.save

    def crash_halfway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half the bytes are on disk, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_halfway)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(run, _state(2.0), cfg, step=20)
    monkeypatch.undo()
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["latest", "step_00000010.pt"]
    assert good.read_bytes() == before
    state = ckpt.load_checkpoint(tmp_path)
    assert state["step"] == 10 and torch.equal(state["model"]["w"], torch.full((2, 3), 1.0))


def test_stale_temporary_from_a_killed_writer_is_ignored_and_cleaned(tmp_path: Path, cfg) -> None:
    run = ckpt.run_dir(tmp_path)
    ckpt.save_checkpoint(run, _state(1.0), cfg, step=10)
    stale = run.checkpoints / ".tmp-step_00000020.pt.12345"
    stale.write_bytes(b"PK\x03\x04 half a zip")
    assert ckpt.load_checkpoint(tmp_path)["step"] == 10
    ckpt.save_checkpoint(run, _state(2.0), cfg, step=20)
    assert not stale.exists()


def test_non_plain_values_are_refused_before_writing(tmp_path: Path, cfg) -> None:
    run = ckpt.run_dir(tmp_path)
    bad = {**_state(0.0), "rng": {"gen": torch.Generator()}}
    with pytest.raises(TypeError, match=r"checkpoint\['rng'\]\['gen'\] is a Generator"):
        ckpt.save_checkpoint(run, bad, cfg, step=1)
    assert ckpt.list_checkpoints(run.checkpoints) == []


def test_load_for_inference_uses_slowest_ema_unless_told_not_to(tmp_path: Path, cfg) -> None:
    run = ckpt.run_dir(tmp_path)
    state = _state(3.0)
    state["model"]["w"] = state["model"]["w"].to(torch.bfloat16)
    ckpt.save_checkpoint(run, state, cfg, step=5)
    got_cfg, weights = ckpt.load_for_inference(tmp_path)
    assert got_cfg == cfg
    assert weights["w"].dtype == torch.bfloat16 and torch.all(weights["w"] == 7.0)
    assert torch.equal(weights["buf"], torch.arange(3))
    _, raw = ckpt.load_for_inference(tmp_path, use_ema=False)
    assert torch.all(raw["w"] == 3.0)


def test_missing_path_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint or run directory at") as e:
        ckpt.load_checkpoint(tmp_path / "nope")
    assert "\n" not in str(e.value)


def test_run_dir_without_checkpoints_error(tmp_path: Path, cfg) -> None:
    ckpt.run_dir(tmp_path).create(cfg)
    with pytest.raises(FileNotFoundError, match="has no checkpoints") as e:
        ckpt.load_for_inference(tmp_path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("keep_fraction", [0.0, 0.5, 0.9])
def test_truncated_file_error(tmp_path: Path, cfg, keep_fraction: float) -> None:
    path = ckpt.save_checkpoint(ckpt.run_dir(tmp_path), _state(1.0), cfg, step=1)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    with pytest.raises(ValueError, match="cannot be read: it is empty, cut short or damaged") as e:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_unknown_format_version_error(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    torch.save({"format_version": 99, "model": {}}, path)
    with pytest.raises(ValueError, match="format_version 99 but this iddpm reads version 1"):
        ckpt.load_checkpoint(path)


def test_file_without_format_version_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not an iddpm checkpoint"):
        ckpt.load_checkpoint(path)


def test_keep_must_be_positive(tmp_path: Path, cfg) -> None:
    with pytest.raises(ValueError, match="keep must be >= 1"):
        ckpt.save_checkpoint(tmp_path, _state(0.0), cfg, step=1, keep=0)


def test_slowest_ema_is_the_largest_rate_and_damaged_entries_are_one_line() -> None:
    w = {"w": torch.zeros(2)}
    where = Path("run/checkpoints/step_00000001.pt")
    assert ckpt.slowest_ema({}, where) is None and ckpt.slowest_ema({"ema": {}}, where) is None
    assert ckpt.slowest_ema({"ema": {"0.99": {}, "0.9999": w}}, where) == ("0.9999", w)
    damaged = [
        (torch.zeros(3), "EMA entry is a Tensor"),
        ({"0.99": torch.zeros(1)}, "EMA entry '0.99' holds a Tensor"),
        ({"fast": w}, "EMA entry 'fast'"),
        ({"0.99": {"w": [1.0]}}, "parameter 'w' is not a tensor"),
    ]
    for ema, message in damaged:
        with pytest.raises(ValueError, match=message) as e:
            ckpt.slowest_ema({"ema": ema}, where)
        assert "\n" not in str(e.value) and "step_00000001.pt" in str(e.value)
