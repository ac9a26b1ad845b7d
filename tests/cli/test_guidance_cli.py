"""Guidance, class dropout, train-classifier and classify on the command line: the bad
input of issue 17 (one line, exit 2, nothing written) and one guided sample whose JSON
says what it cost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _contract import TINY_TRAIN, check_failure, check_unchanged, invoke, tree_state

pytestmark = pytest.mark.slow  # trains four tiny runs (~10 s); the logic is tested fast in
# tests/workflows/test_guidance_requests.py and tests/train/test_class_dropout.py

COND = ["--class-cond", "--num-classes", "10"]
SAMPLE = ["--num", "2", "--steps", "3", "--batch-size", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("guidance-cli")
    made = {
        "uncond": ["train", *TINY_TRAIN],
        "cond": ["train", *TINY_TRAIN, *COND, "--class-dropout", "0.1"],
    }
    for name, args in made.items():
        result = invoke([*args, "--run-dir", root / name])
        assert result.exit_code == 0, result.output + result.stderr
    for name, extra in (("clf", []), ("clf_t", ["--diffusion-steps", "10"])):
        args = ["train-classifier", "--model", root / "cond", "--steps", "1", *extra]
        result = invoke([*args, "--batch-size", "4", "--run-dir", root / name])
        assert result.exit_code == 0, result.output + result.stderr
    return {name: root / name for name in ("uncond", "cond", "clf", "clf_t")}


CASES = {
    "guidance on an unconditional model": (
        lambda r: ["sample", r["uncond"], *SAMPLE, "--guidance-scale", "2"],
        "--classifier",
    ),
    "negative guidance scale": (
        lambda r: ["sample", r["cond"], *SAMPLE, "--guidance-scale", "-1"],
        "--guidance-scale",
    ),
    "NaN guidance scale": (
        lambda r: ["sample", r["cond"], *SAMPLE, "--guidance-scale", "nan"],
        "--guidance-scale",
    ),
    "infinite classifier scale": (
        lambda r: [
            "sample",
            r["cond"],
            *SAMPLE,
            "--classifier",
            r["clf"],
            "--classifier-scale",
            "inf",
        ],
        "--classifier-scale",
    ),
    "classifier of another T": (
        lambda r: ["sample", r["cond"], *SAMPLE, "--classifier", r["clf_t"]],
        "diffusion steps T",
    ),
    "a diffusion run as the classifier": (
        lambda r: ["sample", r["cond"], *SAMPLE, "--classifier", r["cond"]],
        "not a classifier",
    ),
    "a classifier as the model": (
        lambda r: ["sample", r["clf"], *SAMPLE],
        "noise-aware classifier",
    ),
    "--class out of range": (
        lambda r: ["sample", r["cond"], *SAMPLE, "--class", "12"],
        "--class 12",
    ),
    "class dropout of 1": (
        lambda r: ["train", *TINY_TRAIN, *COND, "--class-dropout", "1", "--run-dir", "x"],
        "--class-dropout",
    ),
    "negative class dropout": (
        lambda r: ["train", *TINY_TRAIN, *COND, "--class-dropout", "-0.1", "--run-dir", "x"],
        "--class-dropout",
    ),
    "class dropout on an unconditional model": (
        lambda r: ["train", *TINY_TRAIN, "--class-dropout", "0.1", "--run-dir", "x"],
        "--class-cond",
    ),
    "classify an unconditional model": (
        lambda r: ["classify", r["uncond"], "--num-images", "2", "--mc", "2"],
        "class-conditional",
    ),
    "train-classifier for an unconditional model without --num-classes": (
        lambda r: ["train-classifier", "--model", r["uncond"], "--run-dir", "x"],
        "--num-classes",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_guidance_input(name: str, runs, tmp_path: Path, monkeypatch) -> None:
    setup, hint = CASES[name]
    work = tmp_path / "work"
    shutil.copytree(runs["cond"].parent, work)
    copies = {k: work / v.name for k, v in runs.items()}
    monkeypatch.chdir(work)
    before = tree_state(work)
    result = invoke(setup(copies))
    check_failure(result, 2, hint)
    check_unchanged(before, tree_state(work))


def test_a_guided_sample_says_what_it_cost(runs, tmp_path: Path) -> None:
    out = tmp_path / "s.npz"
    args = ["sample", runs["cond"], *SAMPLE, "--guidance-scale", "3", "--out", out]
    result = invoke([*args, "--classifier", runs["clf"], "--classifier-scale", "2"])
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["network_calls"] == 3 and summary["network_rows_per_sample"] == 6
    assert summary["classifier_form"] == "mean" and summary["classifier_calls_per_sample"] == 3


def test_classify_reports_accuracy_and_writes_its_summary(runs, tmp_path: Path) -> None:
    args = ["classify", runs["cond"], "--num-images", "4", "--mc", "2", "--out-dir", tmp_path]
    result = invoke(args)
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0 <= summary["accuracy"] <= 1 and summary["num_images"] == 4
    assert len(summary["confusion"]) == 10 and sum(map(sum, summary["confusion"])) == 4
    assert summary["estimator"].startswith("Monte-Carlo, 2 log-stratified")
    written = json.loads((tmp_path / "classify_test_20_mc2.json").read_text())
    assert written["accuracy"] == summary["accuracy"]
