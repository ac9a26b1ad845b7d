"""Metrics: running means, quartile buckets by t/T and the jsonl sink."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from iddpm.train.metrics import JsonlSink, RunningMeans, timestep_quartile


def test_quartile_boundaries_follow_t_over_T() -> None:
    T = 4000
    t = torch.tensor([0, 999, 1000, 1999, 2000, 2999, 3000, 3999])
    assert timestep_quartile(t, T).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # T not divisible by 4: bucket k holds the t with k/4 <= t/T < (k+1)/4.
    t10 = torch.arange(10)
    want = [int(4 * i / 10) for i in range(10)]
    assert timestep_quartile(t10, 10).tolist() == want


def test_running_means_equal_the_mean_over_all_added_examples() -> None:
    gen = torch.Generator().manual_seed(0)
    T = 100
    ts, losses, mses = [], [], []
    means = RunningMeans()
    for n in (3, 7, 5):  # batches of different sizes: a mean of means would be wrong
        t = torch.randint(0, T, (n,), generator=gen)
        loss, mse = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
        means.add_examples(t, T, loss=loss, mse=mse)
        ts.append(t), losses.append(loss), mses.append(mse)
    t, loss, mse = torch.cat(ts), torch.cat(losses).double(), torch.cat(mses).double()
    got = means.summary()
    assert got["loss"] == pytest.approx(loss.mean().item(), rel=1e-12)
    assert got["mse"] == pytest.approx(mse.mean().item(), rel=1e-12)
    for k in range(4):
        sel = (t * 4 // T) == k
        if sel.any():
            assert got[f"loss_q{k}"] == pytest.approx(loss[sel].mean().item(), rel=1e-12)
        else:
            assert f"loss_q{k}" not in got


def test_empty_quartiles_are_omitted_and_summary_resets() -> None:
    means = RunningMeans()
    means.add_examples(torch.tensor([0, 1]), 8, loss=torch.tensor([1.0, 3.0]))
    assert means.summary() == {"loss": 2.0, "loss_q0": 2.0}
    assert means.summary() == {}


def test_scalars_average_per_call() -> None:
    means = RunningMeans()
    for v in (1.0, torch.tensor(2.0), 6.0):
        means.add_scalar("grad_norm", v)
    assert means.summary(reset=False) == {"grad_norm": 3.0}
    assert means.summary() == {"grad_norm": 3.0}


def test_instances_share_no_state() -> None:
    a, b = RunningMeans(), RunningMeans()
    a.add_scalar("x", 1.0)
    assert b.summary() == {}


def test_mismatched_metric_shape_error() -> None:
    with pytest.raises(ValueError, match="metric 'loss' has shape \\(3,\\) but t has \\(2,\\)"):
        RunningMeans().add_examples(torch.tensor([0, 1]), 4, loss=torch.zeros(3))


def test_jsonl_sink_appends_one_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "metrics.jsonl"
    sink = JsonlSink(path)
    sink.write({"step": 1, "loss": 0.5})
    JsonlSink(path).write({"step": 2, "loss": 0.25})  # a resumed run appends
    lines = path.read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    assert sink.read() == [json.loads(x) for x in lines]
