"""What a run directory holds after the awkward cases: a run killed before its first save,
a resume after a kill, a damaged config.json, a converted model replacing a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _contract import TINY_TRAIN, check_failure, invoke, tree_state

FIXTURE = Path(__file__).parents[1] / "fixtures" / "improved_diffusion_unet.npz"


def ok(args: list) -> dict:
    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("state") / "run"
    ok(["train", *TINY_TRAIN, "--run-dir", run])
    return run


def test_fresh_start_over_a_run_killed_before_its_first_save(trained, tmp_path) -> None:
    # what a kill inside the very first save leaves: config, metrics, a temporary file
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(trained / "config.json", run)
    (run / "metrics.jsonl").write_text("".join(f'{{"step": {s}}}\n' for s in (1, 2, 3)) + '{"st')
    (run / "checkpoints" / ".tmp-step_00000004.pt.999").write_bytes(b"partial")
    ok(["train", *TINY_TRAIN, "--run-dir", run])  # not "already holds a run"
    assert steps_logged(run) == [1, 2]  # the dead run's lines are gone
    assert not list(run.rglob(".tmp-*"))
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == [
        "step_00000001.pt",
        "step_00000002.pt",
    ]


def test_resume_drops_the_lines_of_steps_trained_again(trained, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    with open(run / "metrics.jsonl", "a") as f:  # killed after logging steps 3-4, mid-line
        f.write('{"step": 3, "loss": 1.0}\n{"step": 4, "loss": 1.0}\n{"step": 5, "lo')
    ok(["train", "--resume", "--run-dir", run, "--steps", "4"])
    assert steps_logged(run) == [1, 2, 3, 4]
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 4


def test_resume_with_a_damaged_config_json_uses_the_checkpoints_config(trained, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "config.json").write_text("{ damaged")
    summary = ok(["train", "--resume", "--run-dir", run, "--steps", "3"])
    assert summary["step"] == 3
    restored = json.loads((run / "config.json").read_text())  # rewritten with the checkpoint
    assert restored["train"]["steps"] == 3 and restored["diffusion"]["num_timesteps"] == 20


def test_resume_without_config_json(trained, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "config.json").unlink()
    assert ok(["train", "--resume", "--run-dir", run, "--steps", "3"])["step"] == 3


def test_resume_accepts_the_preset_and_flags_the_run_was_started_with(trained, tmp_path) -> None:
    # the README's advice: rerun the same command with --resume
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    summary = ok(["train", "--preset", "digits", *TINY_TRAIN, "--run-dir", run, "--resume"])
    assert summary["step"] == 2 and summary["steps_run"] == 0
    args = ["train", "--config", trained / "config.json", *TINY_TRAIN, "--steps", "3"]
    assert ok([*args, "--run-dir", run, "--resume"])["step"] == 3


def test_resume_refuses_a_preset_that_conflicts_and_lists_the_fields(trained, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = tree_state(run)
    result = invoke(["train", "--preset", "digits", "--run-dir", run, "--resume"])
    line = check_failure(result, 2, "drop --preset")
    for field in ("--diffusion-steps: run 20, --preset digits 1000", "--num-heads", "--steps"):
        assert field in line
    assert "--lr" not in line and "--model-channels" not in line  # only those that differ
    result = invoke(["train", "--preset", "cifar10", *TINY_TRAIN, "--run-dir", run, "--resume"])
    assert "--image-size: run 8, --preset cifar10 32" in check_failure(result, 2, "--resume")
    assert tree_state(run) == before


def test_convert_overwrite_replaces_the_run(trained, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    data = np.load(FIXTURE)
    keys = json.loads(str(data["tiny.state_dict_keys"]))
    torch.save({k: torch.from_numpy(data[f"tiny.sd.{k}"]) for k in keys}, tmp_path / "m.pt")
    args = ["convert", tmp_path / "m.pt", "--image-size", "8", "--num-heads", "2", "--run-dir", run]
    assert invoke(args).exit_code == 2  # refused without --overwrite
    summary = ok([*args, "--overwrite", "--diffusion-steps", "50"])
    assert [p.name for p in (run / "checkpoints").glob("*.pt")] == ["step_00000000.pt"]
    assert not (run / "metrics.jsonl").exists()
    assert json.loads((run / "config.json").read_text()) == summary["config"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000000.pt"
