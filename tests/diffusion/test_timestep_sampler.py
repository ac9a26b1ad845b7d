"""Timestep samplers: uniform and the L_vlb importance sampler (docs/paper.md P13)."""

from __future__ import annotations

import ast
import io
import math
from pathlib import Path

import pytest
import torch

from iddpm.diffusion.timestep_sampler import LossSecondMomentSampler, UniformSampler


def loss_table(T: int) -> torch.Tensor:
    """A synthetic per-step loss table spanning three orders of magnitude, like L_vlb's
    terms (large at the first step, small in the middle). [T] float64."""
    t = torch.arange(T, dtype=torch.float64)
    return 0.01 + 5.0 * torch.exp(-t / 3.0) + 0.2 * t / T


def warmed(T: int, table: torch.Tensor, history: int = 10, **kw) -> LossSecondMomentSampler:
    sampler = LossSecondMomentSampler(T, history=history, **kw)
    for _ in range(history):
        sampler.update(torch.arange(T), table)
    return sampler


# ---------------------------------------------------------------------- uniform
def test_uniform_sampler_is_uniform_with_unit_weights(generator: torch.Generator) -> None:
    s = UniformSampler(50)
    torch.testing.assert_close(s.probabilities(), torch.full((50,), 1 / 50, dtype=torch.float64))
    t, w = s.sample(20_000, generator)
    assert t.dtype == torch.int64 and w.dtype == torch.float32 and t.shape == w.shape == (20_000,)
    assert bool((w == 1).all()) and int(t.min()) >= 0 and int(t.max()) < 50
    # Each count is Binomial(n, 1/T): within 5 standard deviations.
    counts = torch.bincount(t, minlength=50).double()
    n, p = 20_000, 1 / 50
    assert float((counts - n * p).abs().max()) < 5 * math.sqrt(n * p * (1 - p))


def test_sample_of_zero_and_device_argument() -> None:
    t, w = UniformSampler(5).sample(0, device="cpu")
    assert t.shape == w.shape == (0,) and t.dtype == torch.int64


# ---------------------------------------------------------------------- warm-up, history
def test_importance_sampler_is_uniform_until_every_step_has_its_history() -> None:
    T = 8
    s = LossSecondMomentSampler(T, history=10)
    table = loss_table(T)
    for _ in range(10):
        s.update(torch.arange(T - 1), table[: T - 1])  # the last step is never seen
    assert not s.warmed_up()
    torch.testing.assert_close(s.probabilities(), torch.full((T,), 1 / T, dtype=torch.float64))
    for k in range(9):
        s.update(torch.tensor([T - 1]), table[T - 1 :])
        assert not s.warmed_up(), k
    s.update(torch.tensor([T - 1]), table[T - 1 :])
    assert s.warmed_up()
    assert not torch.allclose(s.probabilities(), torch.full((T,), 1 / T, dtype=torch.float64))


def test_probabilities_are_proportional_to_root_mean_square_loss_mixed_with_uniform() -> None:
    T, u = 12, 0.001
    table = loss_table(T)
    s = warmed(T, table, uniform_prob=u)
    # With a constant history, √E[L_t²] = L_t exactly.
    expected = (1 - u) * table / table.sum() + u / T
    torch.testing.assert_close(s.probabilities(), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.probabilities().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_history_keeps_only_the_last_values_of_each_step() -> None:
    T = 3
    s = LossSecondMomentSampler(T, history=10, uniform_prob=0.0)
    for k in range(1, 16):  # 15 values per step: 1..15 times a per-step scale
        s.update(torch.arange(T), torch.tensor([1.0, 2.0, 4.0]) * k)
    rms_last10 = math.sqrt(sum(k * k for k in range(6, 16)) / 10)
    rms = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64) * rms_last10
    torch.testing.assert_close(s.probabilities(), rms / rms.sum(), rtol=1e-12, atol=0)
    assert s.loss_counts.tolist() == [15, 15, 15]


def test_duplicate_steps_in_one_update_are_all_recorded_in_order() -> None:
    s = LossSecondMomentSampler(2, history=2, uniform_prob=0.0)
    s.update(torch.tensor([0, 0, 0, 1, 1]), torch.tensor([9.0, 3.0, 4.0, 1.0, 1.0]))
    # Step 0 keeps its last two values, 3 and 4: rms = √12.5; step 1: rms = 1.
    p = s.probabilities()
    r = math.sqrt(12.5)
    torch.testing.assert_close(p, torch.tensor([r / (r + 1), 1 / (r + 1)], dtype=torch.float64))


def test_all_zero_history_falls_back_to_uniform() -> None:
    s = warmed(4, torch.zeros(4))
    torch.testing.assert_close(s.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))


# ---------------------------------------------------------------------- unbiasedness
def test_importance_weights_make_the_objective_unbiased_exactly() -> None:
    T = 40
    table = loss_table(T)
    s = warmed(T, table * (1 + 0.1 * torch.cos(torch.arange(T))))  # p need not match L
    p = s.probabilities()
    # Read each step's weight off the sampler's own output (every step is drawn).
    t, w = s.sample(50_000, torch.Generator().manual_seed(0))
    w_of_t = torch.zeros(T, dtype=torch.float64).index_put_((t,), w.double())
    assert set(t.tolist()) == set(range(T))
    assert torch.equal(w.double(), w_of_t[t])  # one weight per step
    # E_{t∼p}[w_t L_t] = Σ_t p_t w_t L_t = (1/T) Σ_t L_t, the uniform objective
    # (to float32 precision, the dtype of the returned weights).
    torch.testing.assert_close((p * w_of_t * table).sum(), table.mean(), rtol=1e-6, atol=0)


def test_importance_sampled_estimate_is_unbiased_and_has_lower_variance() -> None:
    T, n = 40, 200_000
    table = loss_table(T)
    s = warmed(T, table)
    t, w = s.sample(n, torch.Generator().manual_seed(1))
    est = w.double() * table[t]
    # Exact variance of one draw of w·L under p gives the Monte-Carlo tolerance.
    p = s.probabilities()
    second = (p * (table / (T * p)) ** 2).sum()
    var = float(second - table.mean() ** 2)
    assert abs(float(est.mean()) - float(table.mean())) < 5 * math.sqrt(var / n)
    # p ∝ √E[L²] is the variance-minimising choice: far below uniform sampling's variance.
    var_uniform = float(table.var(unbiased=False))
    assert var < 0.1 * var_uniform


# ---------------------------------------------------------------------- state
def test_state_round_trip_gives_identical_future_samples() -> None:
    T = 16
    s = LossSecondMomentSampler(T)
    gen = torch.Generator().manual_seed(2)
    for _ in range(12):
        t, _ = s.sample(8, gen)
        s.update(t, loss_table(T)[t] * (1 + torch.rand(8, generator=gen, dtype=torch.float64)))
    s.update(torch.arange(T).repeat(10), loss_table(T).repeat(10))
    buf = io.BytesIO()
    torch.save(s.state_dict(), buf)
    buf.seek(0)
    restored = LossSecondMomentSampler(T)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(restored.probabilities(), s.probabilities())

    def future(sampler: LossSecondMomentSampler) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(3)
        out = []
        for k in range(5):
            t, w = sampler.sample(6, g)
            sampler.update(t, torch.full((6,), float(k + 1)))
            out.append((t, w))
        return out

    for (t1, w1), (t2, w2) in zip(future(s), future(restored)):
        assert torch.equal(t1, t2) and torch.equal(w1, w2)


def test_uniform_state_round_trip() -> None:
    s = UniformSampler(7)
    s.load_state_dict(s.state_dict())
    with pytest.raises(ValueError, match="state is for 7 diffusion steps but this sampler has 8"):
        UniformSampler(8).load_state_dict(s.state_dict())


@pytest.mark.parametrize(
    "state_change, message",
    [
        ({"kind": "uniform"}, "state is for a 'uniform' timestep sampler"),
        ({"num_timesteps": 5}, "state is for 5 diffusion steps"),
        ({"history": 4}, "state has history=4 but this sampler has 10"),
        ({"uniform_prob": 0.5}, "state has uniform_prob=0.5 but this sampler has 0.001"),
    ],
)
def test_load_state_rejects_a_different_sampler(state_change: dict, message: str) -> None:
    state = {**LossSecondMomentSampler(6).state_dict(), **state_change}
    with pytest.raises(ValueError) as err:
        LossSecondMomentSampler(6).load_state_dict(state)
    assert message in str(err.value)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: UniformSampler(0), "integer >= 1, got 0"),
        (lambda: LossSecondMomentSampler(5, history=0), "history must be an integer >= 1"),
        (lambda: LossSecondMomentSampler(5, uniform_prob=1.5), "uniform_prob must be in [0, 1]"),
        (lambda: UniformSampler(5).sample(-1), "integer >= 0, got -1"),
    ],
)
def test_bad_construction_raises_one_line_errors(make, message: str) -> None:
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "t, losses, message",
    [
        (torch.tensor([0, 1]), torch.tensor([1.0]), "matching 1-d tensors"),
        (torch.tensor([[0]]), torch.tensor([[1.0]]), "matching 1-d tensors"),
        (torch.tensor([0.0]), torch.tensor([1.0]), "integer step indices"),
        (torch.tensor([0, 5]), torch.tensor([1.0, 1.0]), "t must lie in [0, 5), got range [0, 5]"),
        (torch.tensor([0]), torch.tensor([float("nan")]), "losses must be finite"),
    ],
)
@pytest.mark.parametrize("cls", [UniformSampler, LossSecondMomentSampler])
def test_bad_updates_raise_one_line_errors(cls, t, losses, message: str) -> None:
    with pytest.raises(ValueError) as err:
        cls(5).update(t, losses)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_module_never_touches_torch_distributed() -> None:
    # Gathering is the trainer's job (P13); the sampler must work without a process group.
    import iddpm.diffusion.timestep_sampler as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("torch.distributed") for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("torch.distributed")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert not (node.value.id == "torch" and node.attr == "distributed")
