"""The command line through click's in-process runner: JSON last lines and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from iddpm._tensor import to_model_range
from iddpm.build import load_model, spaced
from iddpm.cli import cli
from iddpm.data.bundled import load_digits
from iddpm.diffusion.likelihood import bits_per_dim
from iddpm.diffusion.samplers import per_sample_generators


def run_cli(*args: str, ok: bool = True):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output + result.stderr
    return result


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_one_line_error(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("iddpm: error: ")
    assert pattern in lines[0], lines[0]


def test_sample_writes_npz_grid_and_json(random_run, tmp_path) -> None:
    run, _ = random_run
    out = tmp_path / "s.npz"
    res = run_cli("sample", run, "--num", 5, "--steps", "4", "--batch-size", 2, "--out", out)
    summary = last_json(res)
    assert summary["num"] == 5 and summary["out"] == str(out)
    with np.load(out) as f:
        assert f["arr_0"].shape == (5, 8, 8, 1) and f["arr_0"].dtype == np.uint8
    assert (tmp_path / "s.png").stat().st_size > 0
    assert json.loads((tmp_path / "s.json").read_text()) == summary
    again = run_cli("sample", run, "--num", 5, "--steps", "4", "--out", tmp_path / "t.npz")
    assert last_json(again)["num"] == 5
    with np.load(out) as a, np.load(tmp_path / "t.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])  # batch size does not matter


def test_sample_ddim(random_run, tmp_path) -> None:
    run, _ = random_run
    res = run_cli(
        "sample",
        run,
        "--num",
        2,
        "--steps",
        "ddim5",
        "--sampler",
        "ddim",
        "--out",
        tmp_path / "d.npz",
    )
    assert last_json(res)["sampler"] == "ddim"


def test_nll_reproduces_the_library_exactly(random_run, tmp_path) -> None:
    run, _ = random_run
    res = run_cli(
        "nll",
        run,
        "--num-images",
        3,
        "--batch-size",
        3,
        "--timestep-batch",
        7,
        "--seed",
        5,
        "--out-dir",
        tmp_path,
    )
    summary = last_json(res)
    loaded = load_model(run)
    diffusion, model_fn = spaced(loaded.model, loaded.config.diffusion, "")
    x0 = to_model_range(load_digits("test").images[:3])
    gen = per_sample_generators(5, range(3))  # image i's noise comes from (seed, i)
    want = bits_per_dim(model_fn, diffusion, x0, timestep_batch=7, generator=gen)
    assert summary["bpd"] == float(want.total_bpd.mean())
    assert summary["num_images"] == 3 and summary["data"] == "digits"
    assert (tmp_path / "nll_test_20_terms.csv").is_file()
    assert (tmp_path / "nll_test_20_terms.png").stat().st_size > 0


def test_fid_against_digits(random_run, tmp_path) -> None:
    images = load_digits("test").images[:50]
    np.savez(tmp_path / "real.npz", arr_0=images)
    res = run_cli(
        "fid", tmp_path / "real.npz", "--ref", "digits", "--save-ref", tmp_path / "ref.npz"
    )
    summary = last_json(res)
    assert summary["features"] == "digits-fid" and summary["comparable_to_inception"] is False
    assert 0 < summary["fid"] < 50 and summary["num_samples"] == 50
    assert summary["confident_fraction"] > 0.8
    again = last_json(run_cli("fid", tmp_path / "real.npz", "--ref", tmp_path / "ref.npz"))
    assert again["fid"] == pytest.approx(summary["fid"], rel=1e-9)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sample", "nowhere"], "no checkpoint or run directory at nowhere"),
        (["nll", "nowhere"], "no checkpoint or run directory"),
        (["fid", "missing.npz", "--ref", "digits"], "missing.npz"),
        (["train", "--preset", "digits", "--data", "no/such/dir", "--steps", "1"], "no/such/dir"),
    ],
)
def test_bad_input_gives_one_line(args, message: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run_cli(*args, ok=False), message)


def test_bad_step_spec_and_wrong_npz(random_run, tmp_path) -> None:
    run, _ = random_run
    res = run_cli("sample", run, "--num", 2, "--steps", "30", ok=False)
    assert_one_line_error(res, "30")
    np.savez(tmp_path / "bad.npz", arr_0=np.zeros((2, 8, 8, 1), np.float32))
    assert_one_line_error(
        run_cli("fid", tmp_path / "bad.npz", "--ref", "digits", ok=False), "uint8"
    )


def test_unknown_preset() -> None:
    res = run_cli("train", "--preset", "cifar", ok=False)
    assert_one_line_error(res, "unknown preset 'cifar'; choose one of: digits")


def test_convert_reference_checkpoint_then_sample(tmp_path) -> None:
    import pathlib

    fixture = pathlib.Path(__file__).parent / "fixtures" / "improved_diffusion_unet.npz"
    data = np.load(fixture)
    keys = json.loads(str(data["tiny.state_dict_keys"]))
    sd = {k: torch.from_numpy(data[f"tiny.sd.{k}"]) for k in keys}
    torch.save(sd, tmp_path / "model.pt")
    res = run_cli(
        "convert",
        tmp_path / "model.pt",
        "--image-size",
        8,
        "--num-heads",
        2,
        "--diffusion-steps",
        50,
        "--run-dir",
        tmp_path / "run",
    )
    summary = last_json(res)
    assert summary["parameters"] == int(data["tiny.num_params"])
    assert summary["config"]["diffusion"]["var_type"] == "learned-range"
    loaded = load_model(tmp_path / "run")
    with torch.no_grad():
        out = loaded.model(
            torch.from_numpy(data["unet.x"]), torch.from_numpy(data["unet.timesteps"])
        )
    np.testing.assert_allclose(out.numpy(), data["unet.tiny.out"], rtol=1e-4, atol=1e-5)
    res = run_cli(
        "sample", tmp_path / "run", "--num", 2, "--steps", "5", "--out", tmp_path / "s.npz"
    )
    with np.load(tmp_path / "s.npz") as f:
        assert f["arr_0"].shape == (2, 8, 8, 3)


@pytest.mark.slow
def test_train_digits_preset_from_the_cli(tmp_path) -> None:
    run = tmp_path / "run"
    res = run_cli("train", "--preset", "digits", "--steps", 200, "--run-dir", run,
                  "--batch-size", 16, "--model-channels", 32, "--checkpoint-every", 100,
                  "--log-every", 50)  # fmt: skip
    summary = last_json(res)
    assert summary["step"] == 200 and not summary["interrupted"]
    state = torch.load(summary["checkpoint"], weights_only=True)
    assert state["step"] == 200 and state["config"]["model"]["image_size"] == 8
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [50, 100, 150, 200]
    assert rows[-1]["loss"] < rows[0]["loss"]  # it learns
    assert {"loss", "mse", "vb", "loss_q0", "loss_q3", "grad_norm", "lr"} <= set(rows[-1])
    # Continuing: --resume picks up the run's own config and goes on to the new step count.
    res = run_cli("train", "--run-dir", run, "--resume", "--steps", 210, "--log-every", 5)
    assert last_json(res)["step"] == 210


def _small_run(tmp_path):
    run = tmp_path / "run"
    run_cli("train", "--preset", "digits", "--steps", 2, "--run-dir", run, "--log-every", 1,
            "--model-channels", 32, "--batch-size", 8)  # fmt: skip
    ckpt = run / "checkpoints" / "step_00000002.pt"
    return run, ckpt, ckpt.read_bytes()


def test_bad_training_input_leaves_checkpoints_intact(tmp_path) -> None:
    run, ckpt, before = _small_run(tmp_path)
    res = run_cli("train", "--run-dir", run, "--resume", "--diffusion-steps", 500, ok=False)
    assert_one_line_error(res, "different config (diffusion.num_timesteps: 1000 != 500")
    res = run_cli("train", "--run-dir", run, "--steps", 4, ok=False)
    assert_one_line_error(res, "already holds a run; pass --resume")
    res = run_cli("train", "--run-dir", tmp_path / "new", "--batch-size", 30, "--microbatch", 4,
                  ok=False)  # fmt: skip
    assert_one_line_error(res, "--batch-size 30 is not divisible by --microbatch 4")
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli("train", "--run-dir", tmp_path / "r2", "--data", empty, "--image-size", 8,
                  "--in-channels", 3, ok=False)  # fmt: skip
    assert_one_line_error(res, "no images")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png")
    res = run_cli("train", "--run-dir", tmp_path / "r3", "--data", bad, "--image-size", 8,
                  "--in-channels", 3, ok=False)  # fmt: skip
    assert_one_line_error(res, "broken.png")
    assert ckpt.read_bytes() == before


def test_sweep_over_sampling_steps(random_run, tmp_path) -> None:
    run, _ = random_run
    res = run_cli("sweep", run, "--steps", "5", "--steps", "full", "--num", 8,
                  "--nll-images", 2, "--out-dir", tmp_path)  # fmt: skip
    rows = last_json(res)["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows] == [("ancestral", 5), ("ancestral", 20)]
    assert all(r["fid"] > 0 and r["bpd"] > 0 for r in rows)
    assert (tmp_path / "fid_vs_steps.png").stat().st_size > 0
    assert (tmp_path / "bpd_vs_steps.png").stat().st_size > 0
    assert (tmp_path / "sweep.csv").read_text().startswith("sampler,schedule,steps,nfe,spec,")


def test_inception_features_missing_say_what_to_install(tmp_path) -> None:
    import importlib.util

    if importlib.util.find_spec("torch_fidelity") is not None:
        pytest.skip("torch-fidelity is installed here; this checks the message when it is not")
    np.savez(tmp_path / "s.npz", arr_0=load_digits("test").images[:4])
    res = run_cli("fid", tmp_path / "s.npz", "--ref", "digits", "--features", "inception", ok=False)
    assert_one_line_error(res, "iddpm[fid]")


def test_sweep_compares_samplers_and_routes_their_options(random_run, tmp_path) -> None:
    run, _ = random_run
    res = run_cli("sweep", run, "--samplers", "ancestral,ddim", "--eta", 0.5, "--nfe", "4,8",
                  "--num", 4, "--out-dir", tmp_path)  # fmt: skip
    rows = last_json(res)["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows] == [
        ("ancestral", 4), ("ancestral", 8), ("ddim", 4), ("ddim", 8)
    ]  # fmt: skip
    assert "bpd" not in rows[0]  # the bound is computed only when asked (--nll-images)
    res = run_cli("sweep", run, "--samplers", "ancestral", "--eta", 0.5, ok=False)
    assert_one_line_error(res, "--eta applies to none of the samplers ancestral")


def test_sampler_options_are_checked_against_the_sampler(random_run, tmp_path) -> None:
    run, _ = random_run
    res = run_cli("sample", run, "--num", 2, "--eta", 0.5, "--out", tmp_path / "x.npz", ok=False)
    assert_one_line_error(res, "--eta does not apply to sampler 'ancestral'")
    res = run_cli("sample", run, "--sampler", "euler", "--out", tmp_path / "x.npz", ok=False)
    assert_one_line_error(res, "unknown sampler 'euler'; choose one of: ancestral, ddim")
    assert not (tmp_path / "x.npz").exists()
