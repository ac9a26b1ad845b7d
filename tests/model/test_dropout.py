"""The CPU dropout mask (rand >= p): the distribution of nn.Dropout, its gradient, and the
scale applied without rounding it to the input's dtype."""

from __future__ import annotations

import math

import pytest
import torch

from iddpm.model.layers import Dropout


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_keep_fraction_and_scale(p: float) -> None:
    torch.manual_seed(0)
    n = 1_000_000
    y = Dropout(p).train()(torch.ones(n))
    kept = y != 0
    frac = kept.double().mean().item()
    # binomial: 6 standard errors of the kept fraction, ~1e-9 false-alarm rate
    assert abs(frac - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(y[kept], torch.full_like(y[kept], 1.0 / (1.0 - p)))


def test_gradient_is_the_mask_times_the_scale() -> None:
    torch.manual_seed(1)
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    y = Dropout(0.3).train()(x)
    y.sum().backward()
    mask = (y != 0).float()
    assert torch.equal(x.grad, mask * (1.0 / 0.7))
    assert torch.equal(y, (x * mask) * (1.0 / 0.7))


def test_bf16_scale_is_not_rounded_to_bf16() -> None:
    """Kept bf16 values are x·(1/(1 − p)) rounded once; scaling a bf16 mask first would
    multiply by bf16(1/0.7) = 1.4296875, a 0.08 % bias (some values round differently)."""
    torch.manual_seed(2)
    x = torch.randn(100_000).bfloat16()
    y = Dropout(0.3).train()(x)
    kept = y != 0
    exact = (x.float() * (1.0 / 0.7)).bfloat16()
    assert torch.equal(y[kept], exact[kept])
    biased = (x.float() * float(torch.tensor(1 / 0.7).bfloat16())).bfloat16()
    assert not torch.equal(exact, biased)  # the check above can tell the two apart


def test_eval_mode_and_zero_p_are_the_identity() -> None:
    x = torch.randn(3, 4)
    assert Dropout(0.3).eval()(x) is x
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


def test_same_seed_same_mask() -> None:
    x = torch.randn(2, 3, 4, 4)
    torch.manual_seed(5)
    a = Dropout(0.3).train()(x)
    torch.manual_seed(5)
    b = Dropout(0.3).train()(x)
    assert torch.equal(a, b)
