"""Trainer: it learns, it resumes bitwise, micro-batches and weights enter the gradient as
they should, Ctrl-C leaves a checkpoint, and bad set-ups fail with one line."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from iddpm import checkpoint as ckpt
from iddpm.config import DiffusionConfig, ExperimentConfig, TrainConfig, UNetConfig
from iddpm.diffusion import schedules
from iddpm.diffusion.gaussian import GaussianDiffusion
from iddpm.diffusion.timestep_sampler import LossSecondMomentSampler, UniformSampler
from iddpm.train.trainer import Trainer

T = 10


class TinyNet(nn.Module):
    """A small conv net: x_t, sinusoidal features of t and a learned per-pixel bias (so it
    can memorise a fixed batch) -> ε (and the variance channels)."""

    def __init__(self, out_channels: int = 2, width: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(1, width, 3, padding=1)
        self.time = nn.Linear(8, width)
        self.pos = nn.Parameter(torch.zeros(width, 8, 8))
        self.drop = nn.Dropout(dropout)
        self.conv_mid = nn.Conv2d(width, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Any = None) -> torch.Tensor:
        angles = t.float()[:, None] / 1000.0 * math.pi * torch.arange(1, 5, device=x.device)
        emb = self.time(torch.cat([angles.sin(), angles.cos()], dim=1))
        h = nn.functional.silu(self.conv_in(x) + emb[:, :, None, None] + self.pos)
        h = nn.functional.silu(self.conv_mid(self.drop(h)))
        return self.conv_out(h)


class Batches:
    """Global batch k holds images (k·G + j) mod M, j < G; rank r gets the r-th block."""

    def __init__(self, images: torch.Tensor, local: int, rank: int = 0, world: int = 1) -> None:
        self.images, self.local, self.rank, self.world = images, local, rank, world
        self.position = 0

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        g = self.local * self.world
        idx = (self.position * g + self.rank * self.local + torch.arange(self.local)) % len(
            self.images
        )
        self.position += 1
        return {"x0": self.images[idx]}

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


def images(n: int = 12, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 8, 8, generator=gen) * 2 - 1).round(decimals=1)


def make_cfg(diffusion: dict | None = None, model: dict | None = None, **train: Any):
    base = dict(
        batch_size=8,
        microbatch=2,
        lr=2e-3,
        ema_rates=(0.9, 0.99),
        log_every=2,
        checkpoint_every=1000,
        keep_checkpoints=2,
        seed=7,
        precision="fp32",  # float32 tolerances below; "auto" may pick bf16 on this CPU
    )
    d = dict(num_timesteps=T, loss="hybrid", timestep_sampler="importance")
    m = dict(image_size=8, in_channels=1, out_channels=2, model_channels=32)
    return ExperimentConfig(
        diffusion=DiffusionConfig(**{**d, **(diffusion or {})}),
        model=UNetConfig(**{**m, **(model or {})}),
        train=TrainConfig(**{**base, **train}),
    )


def make_trainer(
    cfg: ExperimentConfig,
    run_dir: Path | None = None,
    data: torch.Tensor | None = None,
    model_seed: int = 0,
    dropout: float = 0.0,
    sampler: Any = None,
    **kwargs: Any,
) -> Trainer:
    torch.manual_seed(model_seed)
    diffusion = GaussianDiffusion(schedules.get("cosine", T))
    local = cfg.train.batch_size
    batches = Batches(images() if data is None else data, local)
    sampler = sampler or LossSecondMomentSampler(T, history=2)
    model = TinyNet(dropout=dropout)
    return Trainer(model, diffusion, batches, sampler, cfg, run_dir=run_dir, **kwargs)


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_trees_equal(a: Any, b: Any, where: str = "state") -> None:
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys differ"
        for k in a:
            assert_trees_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_trees_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where}: tensors differ"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# ---- set-up errors ------------------------------------------------------------------


def test_fp16_on_cpu_is_refused() -> None:
    with pytest.raises(ValueError, match="precision fp16 needs a CUDA GPU"):
        make_trainer(make_cfg(precision="fp16"), device="cpu")


def test_loader_batch_of_the_wrong_size_is_refused() -> None:
    trainer = make_trainer(make_cfg())
    trainer.batches = Batches(images(), local=4)
    with pytest.raises(ValueError, match="a batch of 4 images but each rank needs 8"):
        trainer.step()


def test_diffusion_and_config_must_agree_on_T() -> None:
    cfg = make_cfg()
    with pytest.raises(ValueError, match="the diffusion has 20 steps but the config says 10"):
        Trainer(
            TinyNet(),
            GaussianDiffusion(schedules.get("cosine", 20)),
            Batches(images(), 8),
            UniformSampler(20),
            cfg,
        )


class NanAt(TinyNet):
    """TinyNet whose output is NaN on the forward calls numbered in `bad` (0-based)."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__()
        self.bad, self.calls = bad, 0

    def forward(self, x, t, y=None):
        out = super().forward(x, t)
        self.calls += 1
        return out * float("nan") if self.calls - 1 in self.bad else out


def test_grad_checkpoint_trains_bitwise_like_the_plain_model() -> None:
    from iddpm.model.unet import UNet

    arch = {"model_channels": 8, "num_groups": 4, "dropout": 0.2, "channel_mult": (1, 2)}
    cfg = make_cfg(model={**arch, "num_res_blocks": 1, "attention_resolutions": (4,)})
    states = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = UNet(cfg.model)
        trainer = Trainer(
            model,
            GaussianDiffusion(schedules.get("cosine", T)),
            Batches(images(), 8),
            UniformSampler(T),
            cfg.replace(train=cfg.train.replace(grad_checkpoint=checkpointing)),
        )
        assert model.grad_checkpoint is checkpointing
        for _ in range(2):
            trainer.step()
        states.append(trainer.state_dict())
    assert_trees_equal(states[0], states[1])


def test_grad_checkpoint_needs_a_model_that_offers_it() -> None:
    with pytest.raises(ValueError, match="--grad-checkpoint needs iddpm's UNet, not TinyNet"):
        make_trainer(make_cfg(grad_checkpoint=True))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_non_finite_loss_stops_with_one_line_and_the_checkpoint_intact(
    tmp_path: Path, precision: str
) -> None:
    # micro-batches of 2 in a batch of 8: forward calls 4k..4k+3 belong to step k
    diffusion = GaussianDiffusion(schedules.get("cosine", T))
    cfg = make_cfg(precision=precision, checkpoint_every=2)
    torch.manual_seed(0)
    model = NanAt(bad={13})  # step 3
    trainer = Trainer(model, diffusion, Batches(images(), 8), UniformSampler(T), cfg, tmp_path)
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 3"):
        trainer.run(6)
    assert trainer.step_count == 3  # weights, EMA and sampler untouched at step 3
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [2]
    assert ckpt.load_checkpoint(tmp_path)["step"] == 2


def test_fp16_overflow_skips_the_step_and_lowers_the_loss_scale() -> None:
    # fp16 needs CUDA; a fake scaler (GradScaler's interface) runs the rule on CPU.
    from test_precision import FakeScaler

    from iddpm.train.precision import Precision

    torch.manual_seed(0)
    model = NanAt(bad={1})  # step 0's second micro-batch
    cfg = make_cfg(microbatch=4, log_every=1000)
    diffusion = GaussianDiffusion(schedules.get("cosine", T))
    trainer = Trainer(model, diffusion, Batches(images(), 8), UniformSampler(T), cfg)
    trainer.precision = Precision("fp16", "cpu", scaler=FakeScaler(1024.0))
    before, ema_before = params(model), trainer.ema.state_dict()
    trainer.step()
    assert trainer.step_count == 1 and trainer.precision.loss_scale == 512.0
    assert_trees_equal(params(model), before)
    assert_trees_equal(trainer.ema.state_dict(), ema_before)
    assert trainer.metrics.summary() == {"skipped": 1.0}
    trainer.step()  # finite again: an ordinary update at the lowered scale
    assert any(not torch.equal(before[k], v) for k, v in params(model).items())
    summary = trainer.metrics.summary()
    assert summary["skipped"] == 0.0 and summary["loss_scale"] == 512.0
    assert trainer.state_dict()["grad_scaler"] == {"scale": 512.0}


def test_lr_anneals_linearly_after_the_warmup(tmp_path: Path) -> None:
    cfg = make_cfg(lr=1e-3, warmup_steps=2, lr_anneal_steps=4, log_every=1)
    summary = make_trainer(cfg, run_dir=tmp_path).run(5)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    expected = [1e-3 * 0.5, 1e-3 * 0.75, 1e-3 * 0.5, 1e-3 * 0.25, 0.0]
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-12, abs=0)
    assert summary["precision"] == "fp32"
    assert ckpt.load_checkpoint(tmp_path)["precision"] == "fp32"


# ---- learning ----------------------------------------------------------------------------


def test_overfits_a_fixed_tiny_batch() -> None:
    # One image, four draws of (t, ε) per step, the paper's hybrid objective: the network
    # can memorise it, so the loss must fall far below its starting value.
    cfg = make_cfg(batch_size=4, microbatch=0, lr=3e-3)
    torch.manual_seed(0)
    trainer = Trainer(
        TinyNet(width=32),
        GaussianDiffusion(schedules.get("cosine", T)),
        Batches(images(1).repeat(4, 1, 1, 1), 4),
        UniformSampler(T),
        cfg,
    )
    losses = []
    for _ in range(300):
        trainer.step()
        losses.append(trainer.metrics.summary()["loss"])
    first, last = sum(losses[:20]) / 20, sum(losses[-50:]) / 50
    assert last < 0.2 * first, (first, last)


def test_importance_weights_scale_each_examples_gradient() -> None:
    # With SGD(lr=1) the parameter change is −grad; weights 2·w must double it.
    class Scaled(UniformSampler):
        def __init__(self, factor: float) -> None:
            super().__init__(T)
            self.factor = factor

        def sample(self, n, generator=None, device=None):
            t, w = super().sample(n, generator, device)
            return t, w * self.factor

    changes = []
    for factor in (1.0, 2.0):
        torch.manual_seed(0)
        model = TinyNet()
        before = params(model)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        cfg = make_cfg(microbatch=0)
        diffusion = GaussianDiffusion(schedules.get("cosine", T))
        trainer = Trainer(
            model,
            diffusion,
            Batches(images(), 8),
            Scaled(factor),
            cfg,
            optimizer=opt,
        )
        trainer.step()
        changes.append({k: before[k] - v for k, v in params(model).items()})
    for k in changes[0]:
        torch.testing.assert_close(changes[1][k], 2 * changes[0][k], rtol=1e-5, atol=1e-7)


def test_microbatches_give_the_full_batch_gradient() -> None:
    deltas = []
    for micro in (0, 2, 4):
        torch.manual_seed(0)
        model = TinyNet()
        before = params(model)
        cfg = make_cfg(microbatch=micro)
        trainer = Trainer(
            model,
            GaussianDiffusion(schedules.get("cosine", T)),
            Batches(images(), 8),
            LossSecondMomentSampler(T, history=2),
            cfg,
            optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        )
        trainer.step()
        deltas.append({k: before[k] - v for k, v in params(model).items()})
    assert any(d.abs().max() > 1e-4 for d in deltas[0].values())
    for other in deltas[1:]:
        for k in deltas[0]:
            torch.testing.assert_close(other[k], deltas[0][k], rtol=1e-5, atol=1e-6)


def test_grad_clip_bounds_the_update() -> None:
    torch.manual_seed(0)
    model = TinyNet()
    before = params(model)
    cfg = make_cfg(grad_clip=1e-3, log_every=1)
    trainer = Trainer(
        model,
        GaussianDiffusion(schedules.get("cosine", T)),
        Batches(images(), 8),
        UniformSampler(T),
        cfg,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
    )
    summary = trainer.run(1)
    step = torch.sqrt(sum(((before[k] - v) ** 2).sum() for k, v in params(model).items()))
    assert summary["last_metrics"]["grad_norm"] > 1e-2  # the clip was active
    assert step.item() == pytest.approx(1e-3, rel=1e-4)


# ---- resume and interruption ---------------------------------------------------------------


def test_resume_is_bitwise_exact(tmp_path: Path) -> None:
    # importance sampler warmed up (history 2), micro-batches, dropout, EMA at two rates
    cfg = make_cfg(warmup_steps=3)
    steps, split = 8, 3
    one = make_trainer(cfg, tmp_path / "one", dropout=0.1)
    one.run(steps)
    two = make_trainer(cfg, tmp_path / "two", dropout=0.1)
    two.run(split)
    assert ckpt.load_checkpoint(tmp_path / "two")["step"] == split
    fresh = make_trainer(cfg, tmp_path / "two", dropout=0.1, model_seed=99)
    fresh.resume(tmp_path / "two")
    assert fresh.step_count == split
    fresh.run(steps)
    assert one.timestep_sampler.warmed_up()
    a, b = one.state_dict(), fresh.state_dict()
    a.pop("rng"), b.pop("rng")
    assert_trees_equal(a, b)


def test_sigint_finishes_the_step_and_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGINT)

    def interrupt_at_3(trainer: Trainer) -> None:
        if trainer.step_count == 3:
            os.kill(os.getpid(), signal.SIGINT)

    cfg = make_cfg(sample_every=1)
    trainer = make_trainer(cfg, tmp_path, hooks=[interrupt_at_3])
    summary = trainer.run(100)
    assert summary["interrupted"] and summary["step"] == 3
    state = ckpt.load_checkpoint(tmp_path)
    assert state["step"] == 3 and Path(summary["checkpoint"]).name == "step_00000003.pt"
    assert_trees_equal(state["model"], trainer.module.state_dict())
    assert signal.getsignal(signal.SIGINT) is previous


def test_sigterm_stops_the_same_way(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGTERM)

    def terminate_at_2(trainer: Trainer) -> None:
        if trainer.step_count == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    trainer = make_trainer(make_cfg(sample_every=1), tmp_path, hooks=[terminate_at_2])
    summary = trainer.run(100)
    assert summary["interrupted"] and ckpt.load_checkpoint(tmp_path)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is previous


def test_time_limit_stops_after_the_current_step_with_a_checkpoint(tmp_path: Path) -> None:
    trainer = make_trainer(make_cfg(), tmp_path)
    summary = trainer.run(100, max_seconds=0.0)
    assert summary["time_limit_reached"] and not summary["interrupted"]
    assert summary["step"] == 1 and ckpt.load_checkpoint(tmp_path)["step"] == 1


def test_inference_weights_are_the_slowest_ema_as_in_the_checkpoint(tmp_path: Path) -> None:
    trainer = make_trainer(make_cfg(ema_rates=(0.5, 0.9)), tmp_path)
    trainer.run(3)
    weights = trainer.inference_state_dict()
    _, saved = ckpt.load_for_inference(tmp_path)
    assert_trees_equal(weights, saved)
    assert torch.equal(weights["pos"], trainer.ema.averaged(0.9)["pos"])
    assert not torch.equal(weights["pos"], trainer.module.pos)
    assert_trees_equal(trainer.inference_state_dict(use_ema=False), trainer.module.state_dict())


def test_resume_refuses_a_different_diffusion_or_model(tmp_path: Path) -> None:
    cfg = make_cfg()
    make_trainer(cfg, tmp_path).run(1)
    other = make_cfg(
        diffusion={"schedule": "linear", "num_timesteps": 40}, model={"model_channels": 64}
    )
    trainer = Trainer(
        TinyNet(),
        GaussianDiffusion(schedules.get("linear", 40)),
        Batches(images(), 8),
        UniformSampler(40),
        other,
    )
    with pytest.raises(ValueError) as e:
        trainer.resume(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "was trained with a different config" in msg
    for field in (
        "diffusion.num_timesteps: 10 != 40",
        "diffusion.schedule: 'cosine' != 'linear'",
        "model.model_channels: 32 != 64",
    ):
        assert field in msg
    # training settings may change on resume
    ok = make_trainer(make_cfg(lr=1e-4, steps=50))
    ok.resume(tmp_path)
    assert ok.step_count == 1


# ---- bookkeeping -------------------------------------------------------------------------


def test_run_logs_metrics_calls_hooks_and_keeps_checkpoints(tmp_path: Path) -> None:
    calls: list[int] = []
    cfg = make_cfg(log_every=2, sample_every=3, checkpoint_every=2, keep_checkpoints=2)
    trainer = make_trainer(cfg, tmp_path, hooks=[lambda tr: calls.append(tr.step_count)])
    summary = trainer.run(6)
    assert calls == [3, 6]
    records = [r for r in ckpt.run_dir(tmp_path).metrics_path.read_text().splitlines()]
    import json

    rows = [json.loads(r) for r in records]
    assert [r["step"] for r in rows] == [2, 4, 6]
    want = {"step", "loss", "mse", "vb", "grad_norm", "lr", "images_per_s"}
    assert all(want <= set(r) for r in rows)
    assert all(any(f"loss_q{k}" in r for k in range(4)) for r in rows)
    names = [p.name for _, p in ckpt.list_checkpoints(tmp_path / "checkpoints")]
    assert names == ["step_00000004.pt", "step_00000006.pt"]
    assert summary["checkpoint"].endswith("step_00000006.pt") and not summary["interrupted"]
    assert ckpt.checkpoint_config(ckpt.load_checkpoint(tmp_path)) == cfg


@pytest.mark.parametrize("precision", ["bf16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_autocast_and_channels_last_train_on_cpu(precision: str, channels_last: bool) -> None:
    trainer = make_trainer(make_cfg(precision=precision, channels_last=channels_last))
    before = params(trainer.module)
    trainer.step()
    summary = trainer.metrics.summary()
    assert math.isfinite(summary["loss"]) and summary["loss"] > 0
    assert any(not torch.equal(before[k], v) for k, v in params(trainer.module).items())
    assert all(p.dtype == torch.float32 for p in trainer.module.parameters())
