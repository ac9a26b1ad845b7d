"""Few-step sampling at the command line: the bad inputs of the spacings, the new samplers'
options and `steps --for` give one line and exit 2 with nothing changed (`_contract.py`),
and a damaged sampler-step-cost cache is recomputed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _contract import TINY_TRAIN, check_failure, check_unchanged, invoke, tree_state


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fewstep")
    result = invoke(["train", *TINY_TRAIN, "--run-dir", root / "run"])
    assert result.exit_code == 0, result.output + result.stderr
    return root / "run"


SAMPLE = ["--num", "2"]
CASES = {
    "karras0": (["sample", *SAMPLE, "--steps", "karras0"], "asks for 0 steps"),
    "karras beyond T": (["sample", *SAMPLE, "--steps", "karras30"], "at most 'karras20'"),
    "logsnr beyond its range": (["sample", *SAMPLE, "--steps", "logsnr20"], "use at most"),
    "unipc order 7": (["sample", *SAMPLE, "--sampler", "unipc", "--order", "7"], "--order 7"),
    "ipndm order 0": (["sample", *SAMPLE, "--sampler", "ipndm", "--order", "0"], "--order 0"),
    "unipc variant": (["sample", *SAMPLE, "--sampler", "unipc", "--variant", "x"], "bh1 or bh2"),
    "steps --for ancestral": (["steps", "--for", "ancestral", "--nfe", "3"], "no probability"),
    "steps --for an SDE": (["steps", "--for", "dpmpp2m-sde", "--nfe", "3"], "ipndm"),
    "steps --for, bad --nfe": (["steps", "--for", "heun", "--nfe", "0"], "--nfe"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, run: Path, tmp_path: Path, monkeypatch) -> None:
    args, hint = CASES[name]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    monkeypatch.chdir(tmp_path)
    args = [args[0], copy, *args[1:]]
    before = tree_state(tmp_path)
    result = invoke(args)
    check_failure(result, 2, hint)
    check_unchanged(before, tree_state(tmp_path))


def test_steps_for_a_sampler_caches_its_costs_and_recomputes_a_damaged_cache(
    run: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    args = ["steps", copy, "--for", "heun", "--nfe", "3,5", "--num-images", "8",
            "--candidates", "8"]  # fmt: skip
    first = invoke(args)
    assert first.exit_code == 0, first.output + first.stderr
    specs = [row["spec"] for row in json.loads(first.stdout.strip().splitlines()[-1])["schedules"]]
    assert [len(s.split(",")) for s in specs] == [2, 3]  # Heun: 2K − 1 calls
    (entry,) = (copy / "cache" / "sampler_step_costs").iterdir()
    entry.write_bytes(b"not a cache entry")
    again = invoke(args)
    assert again.exit_code == 0, again.output + again.stderr
    rows = json.loads(again.stdout.strip().splitlines()[-1])["schedules"]
    assert [row["spec"] for row in rows] == specs
    assert entry.read_bytes() != b"not a cache entry"  # recomputed and replaced
