"""distributed: safe without a process group; real collectives in a 2-process gloo group.

The multi-process tests spawn their own ranks on this machine (gloo on CPU, a free port on
localhost) and set the environment torchrun would, so `distributed.init()` is exercised
exactly as in a real launch.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from iddpm import distributed as dist_util


def test_helpers_are_identities_without_a_process_group(capsys: pytest.CaptureFixture) -> None:
    assert not dist_util.is_initialized()
    assert (dist_util.rank(), dist_util.world_size(), dist_util.local_rank()) == (0, 1, 0)
    assert dist_util.is_main()
    x = torch.arange(5.0)
    assert dist_util.all_gather_1d(x) is x
    assert dist_util.all_reduce_sum(x) is x and torch.equal(x, torch.arange(5.0))
    dist_util.barrier()
    dist_util.shutdown()
    assert dist_util.device() == (
        torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    )


def test_init_without_launcher_environment_is_a_single_process_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert not dist_util.launched_by_torchrun()
    assert dist_util.init() is False
    assert dist_util.world_size() == 1


def test_all_gather_1d_rejects_non_vectors() -> None:
    with pytest.raises(ValueError, match="all_gather_1d takes a 1-d tensor"):
        dist_util.all_gather_1d(torch.zeros(2, 2))


def test_bad_local_rank_environment_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "zero")
    with pytest.raises(ValueError, match="LOCAL_RANK='zero' is not an integer"):
        dist_util._env_int("LOCAL_RANK", 0)


# ---- multi-process ------------------------------------------------------------------


RANKS_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable[..., Any], out: str, args) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)
    assert dist_util.init(timeout_s=60)
    try:
        result = fn(*args)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist_util.shutdown()


def run_ranks(world: int, fn: Callable[..., Any], tmp_path: Path, *args: Any) -> list[Any]:
    """Run fn(*args) on `world` spawned gloo ranks; return each rank's (torch.save-able)
    result in rank order. `fn` must be a module-level function. Ranks still running after
    `RANKS_TIMEOUT_S` are killed and fail the test (a hung collective must not hang the suite)."""
    ctx = mp.spawn(
        _entry, args=(world, free_port(), fn, str(tmp_path), args), nprocs=world, join=False
    )
    deadline = time.monotonic() + RANKS_TIMEOUT_S
    while not ctx.join(timeout=1):  # raises if a rank failed
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            raise AssertionError(f"{world} ranks still running after {RANKS_TIMEOUT_S} s")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _collectives() -> dict[str, Any]:
    r = dist_util.rank()
    local = torch.arange(r + 2, dtype=torch.float64) + 10 * r  # lengths 2 and 3
    summed = dist_util.all_reduce_sum(torch.tensor([r + 1.0]))
    dist_util.barrier()
    return {
        "rank": r,
        "world": dist_util.world_size(),
        "main": dist_util.is_main(),
        "gathered": dist_util.all_gather_1d(local),
        "gathered_int": dist_util.all_gather_1d(torch.tensor([r], dtype=torch.int64)),
        "summed": summed,
    }


@pytest.mark.slow
def test_collectives_over_two_gloo_ranks(two_ranks: list[dict[str, Any]]) -> None:
    results = [r["collectives"] for r in two_ranks]
    want = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0], dtype=torch.float64)
    for r, res in enumerate(results):
        assert (res["rank"], res["world"], res["main"]) == (r, 2, r == 0)
        assert torch.equal(res["gathered"], want)  # unequal lengths, rank order, no padding
        assert torch.equal(res["gathered_int"], torch.tensor([0, 1]))
        assert torch.equal(res["summed"], torch.tensor([3.0]))


# ---- data-parallel training ------------------------------------------------------------

T_DIST = 10


def _train(steps: int, microbatch: int) -> dict[str, Any]:
    """A few importance-sampled hybrid-loss steps of a tiny UNet on a global batch of 8."""
    import numpy as np

    from iddpm.config import DiffusionConfig, ExperimentConfig, TrainConfig, UNetConfig
    from iddpm.data.loader import ImageBatches
    from iddpm.diffusion import schedules
    from iddpm.diffusion.gaussian import GaussianDiffusion
    from iddpm.diffusion.timestep_sampler import LossSecondMomentSampler
    from iddpm.model.unet import UNet
    from iddpm.train.trainer import Trainer

    model_cfg = UNetConfig(
        image_size=8, in_channels=1, out_channels=2, model_channels=8, num_res_blocks=1,
        attention_resolutions=(), channel_mult=(1,), num_heads=1, num_groups=4,
    )  # fmt: skip
    cfg = ExperimentConfig(
        diffusion=DiffusionConfig(num_timesteps=T_DIST, timestep_sampler="importance"),
        model=model_cfg,
        train=TrainConfig(
            batch_size=8,
            microbatch=microbatch,
            lr=1e-3,
            ema_rates=(0.9,),
            seed=3,
            precision="fp32",
        ),
    )
    world, rank = dist_util.world_size(), dist_util.rank()
    pixels = np.random.default_rng(0).integers(0, 256, size=(24, 8, 8, 1), dtype=np.uint8)
    batches = ImageBatches(pixels, None, 8 // world, seed=5, rank=rank, world_size=world)
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    trainer = Trainer(
        UNet(model_cfg),
        GaussianDiffusion(schedules.get("cosine", T_DIST)),
        batches,
        LossSecondMomentSampler(T_DIST, history=2),
        cfg,
        device="cpu",
    )
    trainer.run(steps)
    state = trainer.state_dict()
    return {k: state[k] for k in ("model", "ema", "sampler", "data", "step")}


# ---- bits/dim over ranks ----------------------------------------------------------------


def _nll(batch_size: int) -> dict[str, Any]:
    """Per-image bits/dim (exact and Monte-Carlo) of 5 digits under an elementwise network."""
    from conftest import pixelwise_loaded_model
    from iddpm.config import EvalConfig
    from iddpm.data.bundled import load_digits
    from iddpm.eval.nll import evaluate_nll

    images = load_digits("test").images[:5]
    out = {}
    for mc in (0, 3):
        cfg = EvalConfig(batch_size=batch_size, timestep_batch=6, mc_timesteps=mc, seed=4)
        out[mc] = evaluate_nll(pixelwise_loaded_model(), images, None, cfg).total_bpd
    return out


def _periodic_eval() -> dict[str, Any]:
    """The periodic evaluator's record (train/evaluate.py) of fixed weights on 70 held-out
    and 70 training images: 3 chunks, so rank 0 evaluates chunks 0 and 2, rank 1 chunk 1."""
    from types import SimpleNamespace

    from iddpm.config import DiffusionConfig, ExperimentConfig, UNetConfig
    from iddpm.data.bundled import load_digits
    from iddpm.diffusion import schedules
    from iddpm.diffusion.gaussian import GaussianDiffusion
    from iddpm.model.unet import UNet
    from iddpm.train.evaluate import EvalSet, PeriodicEvaluator

    model_cfg = UNetConfig(
        image_size=8, in_channels=1, model_channels=8, num_res_blocks=1,
        attention_resolutions=(), channel_mult=(1,), num_heads=1, num_groups=4,
    )  # fmt: skip
    cfg = ExperimentConfig(diffusion=DiffusionConfig(num_timesteps=T_DIST), model=model_cfg)
    torch.manual_seed(0)
    model = UNet(cfg.model)  # out_channels derived: 2 for the learned range
    sets = [
        EvalSet(torch.from_numpy(load_digits(split).images[:70]).permute(0, 3, 1, 2) / 127.5 - 1)
        for split in ("test", "train")
    ]
    ev = PeriodicEvaluator(*sets, every=1, timesteps=4, seed=2)
    trainer = SimpleNamespace(
        module=model, diffusion=GaussianDiffusion(schedules.get("cosine", T_DIST)), cfg=cfg,
        device=torch.device("cpu"), step_count=1,
    )  # fmt: skip
    return ev._bound(trainer, model.state_dict())


def _two_rank_job(steps: int, microbatch: int) -> dict[str, Any]:
    return {
        "collectives": _collectives(),
        "train": _train(steps, microbatch),
        "nll": _nll(batch_size=2),
        "periodic_eval": _periodic_eval(),
    }


STEPS = 4


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    # one spawn for every multi-process check: starting ranks is the slow part
    return run_ranks(2, _two_rank_job, tmp_path_factory.mktemp("ranks"), STEPS, 2)


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(
    two_ranks: list[dict[str, Any]],
) -> None:
    steps = STEPS
    ranks = [r["train"] for r in two_ranks]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    single = _train(steps, 2)
    torch.set_num_threads(before)
    assert single["sampler"]["loss_counts"].sum() == 8 * steps
    # all ranks hold bitwise identical weights and timestep-sampler state
    for key in ("model", "ema", "sampler"):
        a, b = ranks[0][key], ranks[1][key]
        flat_a = a if key != "ema" else a["0.9"]
        flat_b = b if key != "ema" else b["0.9"]
        for name, value in flat_a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, flat_b[name]), (key, name)
            else:
                assert value == flat_b[name], (key, name)
    # and agree with one process up to float reassociation (gradient all-reduce order)
    for name, value in single["model"].items():
        torch.testing.assert_close(ranks[0]["model"][name], value, rtol=1e-4, atol=1e-5)
    assert torch.equal(ranks[0]["sampler"]["loss_counts"], single["sampler"]["loss_counts"])
    torch.testing.assert_close(
        ranks[0]["sampler"]["loss_history"], single["sampler"]["loss_history"], rtol=1e-4, atol=0
    )
    assert ranks[0]["step"] == single["step"] == steps


@pytest.mark.slow  # the one-process reference alone takes ~3 s on a busy 2-core machine
def test_per_image_bits_per_dim_are_the_same_on_one_and_two_ranks(
    two_ranks: list[dict[str, Any]],
) -> None:
    # Issue 9: image i's noise comes from (seed, i). Two ranks hold images 0-2 and 3-4
    # in batches of 2 ({0,1},{2} and {3,4}); one process uses batches {0,1,2},{3,4}.
    single = _nll(batch_size=3)
    for rank in two_ranks:
        for mc, bpd in single.items():
            assert len(bpd) == 5
            assert rank["nll"][mc].tolist() == bpd.tolist(), mc


@pytest.mark.slow
def test_periodic_evaluation_is_the_same_on_one_and_two_ranks(
    two_ranks: list[dict[str, Any]],
) -> None:
    # issue 19: fixed chunks and per-image generators; the ranks' tables are summed exactly
    single = _periodic_eval()
    assert single["eval_heldout_bpd"] > 0 and "eval_v_q0" in single
    for rank in two_ranks:
        assert rank["periodic_eval"] == single
