"""build.py: load_init_weights (fine-tuning) loads exactly the set it names, refuses what does
not fit or is not a checkpoint in one line, and a fine-tune run starts from those weights;
inference_model gives eval mode, the same network, and a compiled forward whose inductor
cache lands in the folder the caller passes (a run's cache/)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import tiny_experiment
from iddpm.build import build_unet, inference_model, load_init_weights
from iddpm.checkpoint import load_checkpoint, save_checkpoint
from iddpm.config import ExperimentConfig
from iddpm.train.trainer import Trainer
from iddpm.workflows import train as train_workflow


def _random_state(cfg: ExperimentConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_unet(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model.state_dict()


def _source(run: Path, cfg: ExperimentConfig, emas: dict[str, int]) -> dict:
    """A run whose raw weights come from seed 1 and each EMA rate's from its own seed."""
    raw = _random_state(cfg, 1)
    params = {n for n, _ in build_unet(cfg.model).named_parameters()}
    ema = {
        rate: {k: v for k, v in _random_state(cfg, seed).items() if k in params}
        for rate, seed in emas.items()
    }
    save_checkpoint(run, {"model": raw, "ema": ema}, cfg, step=5)
    return {"raw": raw, **ema}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _one_line(e: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


def test_ema_and_raw_load_bitwise_what_they_name(tmp_path: Path) -> None:
    cfg = tiny_experiment()
    sets = _source(tmp_path / "src", cfg, {"0.999": 2, "0.9999": 3})
    model = build_unet(cfg.model)
    info = load_init_weights(model, tmp_path / "src", "raw")
    assert _equal(model.state_dict(), sets["raw"]) and info.weights == "raw"
    info = load_init_weights(model, tmp_path / "src", "ema")
    assert info.weights == "ema 0.9999" and info.checkpoint.name == "step_00000005.pt"
    state = model.state_dict()
    for name, value in state.items():  # parameters from the slowest EMA, buffers from raw
        expected = sets["0.9999"].get(name, sets["raw"][name])
        assert torch.equal(value, expected), name
    assert not torch.equal(state["head_conv.weight"], sets["raw"]["head_conv.weight"])


def test_a_converted_run_without_ema_gives_its_one_set(tmp_path: Path) -> None:
    cfg = tiny_experiment()
    sets = _source(tmp_path / "conv", cfg, {})  # what `iddpm convert` writes: "ema": {}
    model = build_unet(cfg.model)
    info = load_init_weights(model, tmp_path / "conv" / "checkpoints" / "step_00000005.pt")
    assert info.weights == "raw (no EMA stored)" and _equal(model.state_dict(), sets["raw"])


def test_a_different_architecture_is_refused_naming_the_tensors(tmp_path: Path) -> None:
    cfg = tiny_experiment()
    _source(tmp_path / "src", cfg, {"0.99": 2})
    wider = dataclasses.replace(cfg.model, model_channels=64)
    model = build_unet(wider)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as e:
        load_init_weights(model, tmp_path / "src")
    message = _one_line(e)
    assert message.startswith(f"--init-from {tmp_path / 'src' / 'checkpoints'}")
    small, wide = build_unet(cfg.model).state_dict(), model.state_dict()
    differ = sorted(k for k in wide if small[k].shape != wide[k].shape)
    first = f"{differ[0]} {list(small[differ[0]].shape)} there, {list(wide[differ[0]].shape)} here"
    assert f"does not fit this model: {len(differ)} of another shape ({first}, " in message
    assert ", ...)" in message and len(differ) > 3
    assert "model settings of the source's config.json or drop --init-from" in message
    assert _equal(model.state_dict(), before)  # nothing loaded
    conditional = build_unet(dataclasses.replace(cfg.model, num_classes=10))
    with pytest.raises(
        ValueError, match=r"does not fit this model: 1 missing \(class_embed\.weight\)"
    ):
        load_init_weights(conditional, tmp_path / "src")
    unconditional = build_unet(cfg.model)
    save_checkpoint(tmp_path / "cond", {"model": conditional.state_dict(), "ema": {}}, cfg, 1)
    with pytest.raises(ValueError, match=r"1 unexpected \(class_embed\.weight\)"):
        load_init_weights(unconditional, tmp_path / "cond", "raw")


def test_files_that_are_not_checkpoints_are_one_line(tmp_path: Path) -> None:
    model = build_unet(tiny_experiment().model)
    (tmp_path / "random.pt").write_bytes(torch.randint(0, 256, (4000,)).byte().numpy().tobytes())
    (tmp_path / "notes.txt").write_text("hello")
    torch.save(model.state_dict(), tmp_path / "reference.pt")  # a bare state dict
    torch.save({"model": model.state_dict(), "format_version": 7}, tmp_path / "future.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    cases = {
        "random.pt": r"random\.pt cannot be read: it is not a PyTorch file of tensors; pass a",
        "notes.txt": r"notes\.txt cannot be read: it is not a PyTorch file \(KeyError",
        "reference.pt": r"reference\.pt is not an iddpm checkpoint; convert a reference",
        "future.pt": r"future\.pt has format_version 7 but this iddpm reads version 1",
        "list.pt": r"list\.pt is not an iddpm checkpoint; pass a run directory",
    }
    for name, match in cases.items():
        with pytest.raises(ValueError, match=match) as e:
            load_init_weights(model, tmp_path / name)
        _one_line(e)
    with pytest.raises(FileNotFoundError, match="no checkpoint or run directory at"):
        load_init_weights(model, tmp_path / "missing")
    with pytest.raises(ValueError, match="unknown init weights 'best'; choose one of: ema, raw"):
        load_init_weights(model, tmp_path / "future.pt", "best")


def test_config_refuses_unknown_init_weights() -> None:
    with pytest.raises(ValueError, match="unknown init weights 'fast'; choose one of: ema, raw"):
        dataclasses.replace(tiny_experiment().train, init_weights="fast")


def _spy_trainer(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Record the model's weights and the EMA's start as the training job builds its Trainer."""
    seen: dict = {}

    class Spy(Trainer):
        def __init__(self, model, *args, **kwargs) -> None:
            seen["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
            super().__init__(model, *args, **kwargs)
            rate = max(self.ema.rates)
            seen["ema"] = {k: v.clone() for k, v in self.ema.averaged(rate).items()}

    monkeypatch.setattr(train_workflow, "Trainer", Spy)
    return seen


def test_a_fine_tune_run_starts_from_the_source_weights_with_a_fresh_optimizer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_experiment()
    cfg = cfg.replace(train=cfg.train.replace(steps=2, checkpoint_every=2, batch_size=8))
    sets = _source(tmp_path / "src", cfg, {"0.99": 2})
    expected = {**sets["raw"], **sets["0.99"]}
    seen = _spy_trainer(monkeypatch)
    tuned = cfg.replace(train=cfg.train.replace(init_from=str(tmp_path / "src")))
    cpu = torch.device("cpu")
    train_workflow.train(train_workflow.TrainJob(tuned, tmp_path / "ft"), cpu)
    assert _equal(seen["weights"], expected)  # the weights before step 1 are the source EMA's
    assert all(torch.equal(v, expected[k]) for k, v in seen["ema"].items())  # so is the EMA
    torch.manual_seed(cfg.train.seed)
    assert not _equal(build_unet(cfg.model).state_dict(), expected)  # not the seed's weights
    state = load_checkpoint(tmp_path / "ft")
    assert state["step"] == 2 and state["config"]["train"]["init_from"] == str(tmp_path / "src")
    steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {2}  # Adam counted the fine-tune's two steps only: a fresh optimizer
    assert not _equal(state["model"], expected)  # and it trained


def test_a_resumed_fine_tune_continues_from_its_own_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_experiment()
    cfg = cfg.replace(train=cfg.train.replace(steps=1, checkpoint_every=1, batch_size=8))
    _source(tmp_path / "src", cfg, {"0.99": 2})
    tuned = cfg.replace(train=cfg.train.replace(init_from=str(tmp_path / "src")))
    cpu = torch.device("cpu")
    train_workflow.train(train_workflow.TrainJob(tuned, tmp_path / "ft"), cpu)
    after_one = load_checkpoint(tmp_path / "ft")["model"]
    (tmp_path / "src" / "checkpoints" / "latest").unlink()  # the source may even be gone
    for f in (tmp_path / "src" / "checkpoints").iterdir():
        f.unlink()
    seen = _spy_trainer(monkeypatch)
    longer = tuned.replace(train=tuned.train.replace(steps=2))
    train_workflow.train(train_workflow.TrainJob(longer, tmp_path / "ft", resume=True), cpu)
    assert load_checkpoint(tmp_path / "ft")["step"] == 2 and "weights" in seen
    assert not _equal(load_checkpoint(tmp_path / "ft")["model"], after_one)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.drop(self.conv(x)) * t[:, None, None, None]


def test_eager_inference_model_is_the_model_in_eval_mode() -> None:
    model = Tiny().train()
    assert inference_model(model) is model and not model.training


@pytest.mark.slow
def test_compiled_inference_model_matches_and_caches_in_the_given_folder(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    torch.manual_seed(0)
    model = Tiny()
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    compiled = inference_model(model, compile=True, cache_dir=tmp_path / "cache")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t), model(x, t), rtol=1e-5, atol=1e-6)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((tmp_path / "cache").resolve())
    assert any((tmp_path / "cache").iterdir())
