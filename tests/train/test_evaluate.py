"""Periodic evaluation: deterministic (common random numbers), part of the bitwise resume,
the Monte-Carlo bound agrees with the exact one, the learned-variance probe reads what the
network outputs, the overfitting rule, --keep-best."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from iddpm import checkpoint as ckpt
from iddpm.config import DiffusionConfig, ExperimentConfig, TrainConfig, UNetConfig
from iddpm.diffusion import schedules
from iddpm.diffusion.gaussian import GaussianDiffusion
from iddpm.diffusion.likelihood import bits_per_dim
from iddpm.diffusion.samplers import per_sample_generators
from iddpm.diffusion.timestep_sampler import LossSecondMomentSampler
from iddpm.train.evaluate import EvalSet, OverfittingWarning, PeriodicEvaluator, overfitting
from iddpm.train.trainer import Trainer

T = 10


class Net(nn.Module):
    """x_t and t -> ε and the variance channel (a per-pixel bias lets it memorise)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.time = nn.Embedding(T, 8)
        self.pos = nn.Parameter(torch.zeros(8, 8, 8))
        self.out = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Any = None) -> torch.Tensor:
        h = self.conv(x) + self.time(t.long())[:, :, None, None] + self.pos
        return self.out(nn.functional.silu(h))


class Batches:
    def __init__(self, images: torch.Tensor, local: int) -> None:
        self.images, self.local, self.position = images, local, 0

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        idx = (self.position * self.local + torch.arange(self.local)) % len(self.images)
        self.position += 1
        return {"x0": self.images[idx]}

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


def images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 8, 8), generator=gen).float() / 127.5 - 1).clamp(-1, 1)


def make_cfg(**train: Any) -> ExperimentConfig:
    base = dict(batch_size=8, lr=3e-3, ema_rates=(0.9,), log_every=2, seed=5, precision="fp32")
    base.update(checkpoint_every=1000, eval_every=2, eval_timesteps=4)
    return ExperimentConfig(
        diffusion=DiffusionConfig(
            num_timesteps=T, timestep_sampler="importance", rescale_timesteps=False
        ),
        model=UNetConfig(image_size=8, in_channels=1, model_channels=32),
        train=TrainConfig(**{**base, **train}),
    )


def make_trainer(cfg: ExperimentConfig, run: Path | None, train_imgs: torch.Tensor, **kw: Any):
    torch.manual_seed(0)
    heldout = EvalSet(images(40, seed=1))
    subset = EvalSet(train_imgs[:40])
    evaluator = PeriodicEvaluator(
        heldout,
        subset,
        every=cfg.train.eval_every,
        timesteps=cfg.train.eval_timesteps,
        seed=cfg.train.seed,
        patience=cfg.train.overfit_patience,
    )
    return Trainer(
        Net(),
        GaussianDiffusion(schedules.get("cosine", T)),
        Batches(train_imgs, cfg.train.batch_size),
        LossSecondMomentSampler(T, history=2),
        cfg,
        run_dir=run,
        evaluator=evaluator,
        **kw,
    )


def eval_rows(run: Path) -> list[dict[str, Any]]:
    return [r for r in ckpt.run_dir(run).metrics_path.read_text().splitlines() if "eval_" in r]


def test_same_weights_give_the_same_numbers_at_every_evaluation() -> None:
    trainer = make_trainer(make_cfg(), None, images(48, seed=0))
    ev = trainer.evaluator
    first, again = ev.evaluate(trainer), ev.evaluate(trainer)
    keys = [k for k in first if k.startswith("eval_") and k not in ("eval_best", "eval_seconds")]
    assert {k: first[k] for k in keys} == {k: again[k] for k in keys}  # common random numbers
    assert first["eval_heldout_bpd_se"] > 0 and first["eval_train_mc_se"] > 0
    assert len(first["eval_terms_bpd"]) == len(first["eval_strata"]) == 4


def test_resumed_run_logs_what_an_uninterrupted_one_does(tmp_path: Path) -> None:
    data = images(48, seed=0)
    cfg = make_cfg(checkpoint_every=3)
    make_trainer(cfg, tmp_path / "one", data).run(8)
    make_trainer(cfg, tmp_path / "two", data).run(3)  # checkpoint at 3, after the eval at 2
    resumed = make_trainer(cfg, tmp_path / "two", data)
    resumed.resume(tmp_path / "two")
    assert resumed.evaluator.history and resumed.evaluator.history[-1][0] == 2.0
    resumed.run(8)
    one, two = eval_rows(tmp_path / "one"), eval_rows(tmp_path / "two")
    assert len(one) == 4
    strip = [json.loads(r) for r in one], [json.loads(r) for r in two]
    for rows in strip:
        for r in rows:
            r.pop("eval_seconds")
    assert strip[0] == strip[1]


def test_mc_held_out_bound_agrees_with_the_exact_bound(tmp_path: Path) -> None:
    data = images(48, seed=0)
    trainer = make_trainer(make_cfg(), tmp_path, data)
    trainer.run(4)
    record = trainer.evaluator.evaluate(trainer)
    model = trainer.evaluator._model
    held = trainer.evaluator.sets["heldout"].images
    gens = per_sample_generators(123, range(len(held)))
    exact = bits_per_dim(model, trainer.diffusion, held, generator=gens).total_bpd.double()
    # Both estimate the same per-image bound; the MC noise (the MC s.e.) and the exact
    # bound's own noise draw (its spread over images bounds it) are what separate them.
    mc = record["eval_heldout_bpd"]
    se = math.hypot(record["eval_heldout_mc_se"], float(exact.std() / math.sqrt(len(held))))
    assert abs(mc - float(exact.mean())) < 4 * se


def test_variance_probe_reads_the_networks_interpolation() -> None:
    class Constant(Net):
        def forward(self, x, t, y=None):  # ε = 0, v channel = 0.5 everywhere
            out = torch.zeros(x.shape[0], 2, 8, 8) + 0 * self.pos.sum()
            out[:, 1] = 0.5
            return out

    trainer = make_trainer(make_cfg(), None, images(48, seed=0))
    trainer.module = Constant()  # what the evaluator copies its network from
    record = trainer.evaluator._bound(trainer, Constant().state_dict())
    probes = {k: v for k, v in record.items() if k.startswith("eval_v_q")}
    assert len(probes) >= 3 and all(v == pytest.approx(0.75) for v in probes.values())


def test_overfitting_rule() -> None:
    def h(held: list[float], train: list[float]) -> list[list[float]]:
        return [[float(i), a, b] for i, (a, b) in enumerate(zip(held, train))]

    assert overfitting(h([5, 4, 4.1, 4.2, 4.3], [5, 4, 3.9, 3.8, 3.7]), 3)
    assert not overfitting(h([5, 4, 4.1, 4.0, 4.3], [5, 4, 3.9, 3.8, 3.7]), 3)  # not a run
    assert not overfitting(h([5, 4, 4.1, 4.2, 4.3], [5, 4, 4.1, 4.2, 4.3]), 3)  # both rose
    assert not overfitting(h([4, 4.1, 4.2], [4, 3.9, 3.8]), 3)  # too few evaluations


def test_warning_is_one_line_and_once_per_streak() -> None:
    ev = PeriodicEvaluator(EvalSet(torch.zeros(1, 1, 8, 8)), EvalSet(torch.zeros(1, 1, 8, 8)),
                           every=1, patience=2)  # fmt: skip
    held, train = [5, 4, 4.5, 4.6, 4.7, 4.0, 4.1, 4.2], [5, 4, 3.9, 3.8, 3.7, 3.6, 3.5, 3.4]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flags = [
            ev._verdict(i, {"eval_heldout_bpd": a, "eval_train_bpd": b})["eval_overfitting"]
            for i, (a, b) in enumerate(zip(held, train))
        ]
    assert flags == [False, False, False, True, True, False, False, True]
    msgs = [str(w.message) for w in caught if issubclass(w.category, OverfittingWarning)]
    assert len(msgs) == 2 and all("\n" not in m and "overfitting" in m for m in msgs)
    assert ev.best == 4.0


def test_keep_best_keeps_the_checkpoint_of_the_best_held_out_bound(tmp_path: Path) -> None:
    trainer = make_trainer(make_cfg(keep_best=True), tmp_path, images(48, seed=0))
    trainer.run(6)
    rows = [json.loads(r) for r in eval_rows(tmp_path)]
    best = min(rows, key=lambda r: r["eval_heldout_bpd"])
    state = ckpt.load_checkpoint(tmp_path / "checkpoints" / ckpt.BEST)
    assert state["step"] == best["step"]
    assert [p.name for _, p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == [
        "step_00000006.pt"
    ]
    assert ckpt.resolve_checkpoint(tmp_path).name == "step_00000006.pt"  # latest unchanged


def test_keep_best_needs_the_evaluation() -> None:
    with pytest.raises(ValueError, match="--eval-every"):
        TrainConfig(keep_best=True, eval_every=0)


@pytest.mark.slow  # 140 steps and 7 evaluations: ~4 s on a busy 2-core machine
def test_overfitting_warning_fires_on_a_deliberately_overfitted_run() -> None:
    # two training images, a network with a per-pixel bias, no dropout: it memorises them
    data = images(2, seed=0)
    cfg = make_cfg(eval_every=20, overfit_patience=3, lr=3e-3)
    trainer = make_trainer(cfg, None, data)
    trainer.evaluator.sets["train"] = EvalSet(data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.run(140)
    fired = [w for w in caught if issubclass(w.category, OverfittingWarning)]
    assert len(fired) == 1 and "step 120" in str(fired[0].message)
    held = [h[1] for h in trainer.evaluator.history]
    assert held[-1] > min(held)
