"""EMA: the averages follow the closed-form recurrence, in float32, at every rate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from iddpm.train.ema import EMA, rate_key


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).to(dtype)


@pytest.mark.parametrize("rates", [(0.5,), (0.0, 0.9, 0.99)])
def test_average_matches_the_closed_form_weights(rates: tuple[float, ...]) -> None:
    # After k updates with parameter values θ_1..θ_k from θ_0:
    # avg_k = r^k θ_0 + Σ_i (1 − r) r^(k−i) θ_i.
    model = _model()
    history = [{n: p.detach().double().clone() for n, p in model.named_parameters()}]
    ema = EMA(model, rates)
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        ema.update(model)
        history.append({n: p.detach().double().clone() for n, p in model.named_parameters()})
    k = len(history) - 1
    for r in rates:
        for name, avg in ema.averaged(r).items():
            want = r**k * history[0][name]
            for i in range(1, k + 1):
                want = want + (1 - r) * r ** (k - i) * history[i][name]
            assert avg.dtype == torch.float32
            torch.testing.assert_close(avg.double(), want, rtol=1e-6, atol=1e-6)


def test_rate_zero_tracks_the_model_exactly() -> None:
    model = _model()
    ema = EMA(model, [0.0])
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    ema.update(model)
    assert torch.equal(ema.averaged(0.0)["0.weight"], model[0].weight)


def test_half_precision_model_gets_float32_averages() -> None:
    # In bf16 the increment (1 − r)(θ − avg) would round away; the fp32 copy keeps it.
    model = _model(torch.bfloat16)
    ema = EMA(model, [0.9999])
    start = ema.averaged(0.9999)["0.weight"].clone()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    got = ema.averaged(0.9999)["0.weight"]
    assert got.dtype == torch.float32
    moved = model[0].weight.float() - start  # ≈ 1, up to bf16 rounding of θ + 1
    assert moved.abs().min() > 0.5
    torch.testing.assert_close(got - start, 1e-4 * moved, rtol=1e-3, atol=1e-9)


def test_copy_to_writes_the_average_into_a_model() -> None:
    model, other = _model(), _model()
    ema = EMA(model, [0.5, 0.9])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(2.0)
    ema.update(model)
    ema.copy_to(other, 0.5)
    for name, p in other.named_parameters():
        assert torch.equal(p, ema.averaged(0.5)[name])


def test_state_dict_round_trip_is_exact_and_keyed_by_rate() -> None:
    model = _model()
    ema = EMA(model, [0.9, 0.999])
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    ema.update(model)
    state = ema.state_dict()
    assert sorted(state) == ["0.9", "0.999"] and rate_key(0.999) == "0.999"
    fresh = EMA(_model(), [0.999, 0.9])
    fresh.load_state_dict({k: {n: v.clone() for n, v in s.items()} for k, s in state.items()})
    for r in (0.9, 0.999):
        for name, v in ema.averaged(r).items():
            assert torch.equal(fresh.averaged(r)[name], v)


def test_load_refuses_different_rates() -> None:
    ema = EMA(_model(), [0.9])
    with pytest.raises(ValueError, match=r"saved EMA rates \['0.99'\] differ from this run's"):
        ema.load_state_dict(EMA(_model(), [0.99]).state_dict())


def test_load_refuses_different_parameters() -> None:
    ema = EMA(_model(), [0.9])
    with pytest.raises(ValueError, match="saved EMA parameters differ"):
        ema.load_state_dict(EMA(nn.Linear(3, 4), [0.9]).state_dict())


@pytest.mark.parametrize("rates", [(), (1.0,), (-0.1,), (0.9, 0.9)])
def test_bad_rates_are_refused(rates) -> None:
    with pytest.raises(ValueError, match="EMA rates must be"):
        EMA(_model(), rates)


def test_unknown_rate_lookup_names_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"no EMA at rate 0.5; available rates: \[0.9\]"):
        EMA(_model(), [0.9]).averaged(0.5)


def test_warmup_caps_the_rate_early_and_not_late() -> None:
    model = _model()
    ema = EMA(model, [0.999], warmup=True)
    assert ema.effective_rate(0.999, 0) == pytest.approx(0.1)
    assert ema.effective_rate(0.999, 90) == pytest.approx(0.91)
    assert ema.effective_rate(0.999, 100_000) == 0.999
    assert EMA(model, [0.999]).effective_rate(0.999, 0) == 0.999  # off by default


def test_warmup_average_matches_the_closed_form() -> None:
    torch.manual_seed(0)
    model = _model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ema = EMA(model, [0.999], warmup=True)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
    for k in range(3):
        ema.update(model, step=k)
    # shadow = Π_k r_k · θ0 + (1 − Π_k r_k) · 1 with r_k = (1 + k)/(10 + k)
    keep = (1 / 10) * (2 / 11) * (3 / 12)
    for name, avg in ema.averaged(0.999).items():
        want = keep * start[name] + (1 - keep) * torch.ones_like(avg)
        torch.testing.assert_close(avg, want, atol=1e-6, rtol=1e-6)
