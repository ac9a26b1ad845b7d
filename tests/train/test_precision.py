"""Precision policy: "auto" resolves by the documented hardware rule (on mocked hardware),
and the non-finite rule: fp16 skips the step and lowers the loss scale (a fake scaler on
CPU), bf16/fp32 stop with one line and the weights untouched."""

from __future__ import annotations

import pytest
import torch

from iddpm.train import precision as prec
from iddpm.train.precision import Precision, cpu_flags, native_bf16, nonfinite_action


@pytest.mark.parametrize(
    ("device", "capability", "flags", "native"),
    [
        ("cuda", (7, 0), (), False),  # V100: no bf16 tensor cores
        ("cuda", (7, 5), (), False),  # T4
        ("cuda", (8, 0), (), True),  # A100
        ("cuda", (9, 0), (), True),  # H100/H200
        ("cuda", None, (), False),
        ("cpu", None, ("avx2", "avx512f"), False),
        ("cpu", None, ("avx512f", "avx512_bf16"), True),  # Cooper Lake
        ("cpu", None, ("amx_tile", "amx_bf16"), True),  # Sapphire Rapids
        ("mps", None, ("amx_bf16",), False),
    ],
)
def test_native_bf16_rule(device, capability, flags, native) -> None:
    assert native_bf16(device, capability, flags) is native


def test_cpu_flags_are_read_from_cpuinfo(tmp_path) -> None:
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16\n\nflags : other\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(x86) == {"fpu", "avx512f", "amx_bf16"}
    assert cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(("flags", "resolved"), [({"amx_bf16"}, "bf16"), ({"avx2"}, "fp32")])
def test_auto_resolves_by_the_cpu_flags(monkeypatch, flags, resolved) -> None:
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset(flags))
    assert prec.resolve_precision("auto", torch.device("cpu")) == resolved
    for explicit in ("fp32", "bf16", "fp16"):  # an explicit choice is kept as it is
        assert prec.resolve_precision(explicit, torch.device("cpu")) == explicit


def test_nonfinite_rule() -> None:
    assert [nonfinite_action(p, True) for p in ("fp32", "bf16", "fp16")] == ["step"] * 3
    assert nonfinite_action("fp16", False) == "skip"
    assert nonfinite_action("bf16", False) == nonfinite_action("fp32", False) == "stop"


class FakeScaler:
    """GradScaler's interface on CPU: a loss scale that grows and backs off by 2."""

    def __init__(self, scale: float = 1024.0) -> None:
        self.scale_value, self.stepped = scale, 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.div_(self.scale_value)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.stepped += 1
        optimizer.step()

    def update(self, new_scale: float | None = None) -> None:
        if new_scale is not None:
            self.scale_value = new_scale

    def get_scale(self) -> float:
        return self.scale_value

    def get_backoff_factor(self) -> float:
        return 0.5

    def state_dict(self) -> dict:
        return {"scale": self.scale_value}

    def load_state_dict(self, state: dict) -> None:
        self.scale_value = state["scale"]


def test_fp16_overflow_skips_the_step_and_halves_the_scale() -> None:
    scaler = FakeScaler()
    p16 = Precision("fp16", "cpu", scaler=scaler)
    assert p16.keep_step(False, step=3) is False
    assert scaler.get_scale() == 512.0 and scaler.stepped == 0
    assert p16.keep_step(True, step=4) is True and p16.loss_scale == 512.0


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_bf16_and_fp32_stop_on_non_finite_values(name: str) -> None:
    with pytest.raises(FloatingPointError, match="non-finite training loss at step 7"):
        Precision(name, "cpu").keep_step(False, step=7)


def test_fp16_without_a_scaler_needs_cuda() -> None:
    with pytest.raises(ValueError, match="precision fp16 needs a CUDA GPU"):
        Precision("fp16", "cpu")
