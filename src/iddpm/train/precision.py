"""Training precision: which dtype a run trains in, autocast, and fp16 loss scaling.

`--precision auto` (the default) resolves once, when the trainer starts, to "bf16" where
the device runs bf16 matrix work natively and to "fp32" elsewhere (`native_bf16`):
- CUDA: compute capability >= 8.0 (Ampere and newer have bf16 tensor cores);
- CPU: the x86 flags avx512_bf16 or amx_bf16 (Cooper Lake, Sapphire Rapids and newer),
  read from /proc/cpuinfo. torch.backends.cpu.get_cpu_capability() alone cannot tell: it
  says "AVX512" on CPUs with and without them.
On a 2-core Sapphire Rapids (AMX) bf16 autocast made the CIFAR-10 UNet's training step
1.6x faster than fp32 (issue 11); without native bf16 it is emulated and slower.
fp16 (autocast + dynamic loss scaling, CUDA only) is never chosen automatically.

Under bf16/fp16 only the network runs in autocast: its output is cast back to float32, so
the diffusion math, the losses and bits/dim stay float32 (docs/design.md: tables in float64).

Non-finite values (`nonfinite_action`): under fp16 an overflow is expected now and then
and means the loss scale is too high, so the step is skipped and the scale lowered (as
the authors' `optimize_fp16` and torch's GradScaler do); under bf16/fp32 it means the run
diverged, so training stops (the last checkpoint on disk is untouched).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

RESOLVED = ("fp32", "bf16", "fp16")
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def native_bf16(
    device_type: str, cuda_capability: tuple[int, int] | None, cpu_flags: Iterable[str]
) -> bool:
    """True when `device_type` runs bf16 natively: CUDA with capability >= (8, 0), or a
    CPU whose flags include avx512_bf16 or amx_bf16. Pure: the caller reads the hardware."""
    if device_type == "cuda":
        return cuda_capability is not None and tuple(cuda_capability) >= (8, 0)
    if device_type == "cpu":
        return bool(CPU_BF16_FLAGS & set(cpu_flags))
    return False


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first processor in `cpuinfo` (empty if unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def resolve_precision(requested: str, device: torch.device) -> str:
    """The precision a run on `device` trains in: `requested` itself unless it is "auto",
    which becomes "bf16" where `native_bf16` holds and "fp32" elsewhere."""
    if requested != "auto":
        return requested
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    flags = cpu_flags() if device.type == "cpu" else ()
    return "bf16" if native_bf16(device.type, capability, flags) else "fp32"


def nonfinite_action(precision: str, finite: bool) -> str:
    """What a step does after its losses and gradient norm are checked: "step" when all
    are finite; else "skip" under fp16 (skip the update, lower the loss scale) and "stop"
    under bf16/fp32 (the run diverged)."""
    if finite:
        return "step"
    return "skip" if precision == "fp16" else "stop"


class Precision:
    """The resolved precision of a run and the loss scaler that fp16 needs.

    name: "fp32" | "bf16" | "fp16"; device_type: where autocast runs; scaler: an object
    with torch.amp.GradScaler's scale/unscale_/step/update/get_scale/get_backoff_factor/
    state_dict/load_state_dict (built for fp16 on CUDA when None; tests pass a fake).
    """

    def __init__(self, name: str, device_type: str, scaler: Any = None) -> None:
        if name not in RESOLVED:
            raise ValueError(f"unknown resolved precision {name!r}; use one of {RESOLVED}")
        if name == "fp16" and scaler is None:
            if device_type != "cuda":
                raise ValueError(
                    "precision fp16 needs a CUDA GPU (loss scaling); use --precision bf16 or fp32"
                )
            scaler = torch.amp.GradScaler("cuda")
        self.name, self.device_type, self.scaler = name, device_type, scaler
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]

    @classmethod
    def for_run(cls, requested: str, device: torch.device) -> Precision:
        return cls(resolve_precision(requested, device), device.type)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast to bf16/fp16 around the network's forward (nothing for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale (before clipping); no-op without one."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step (through the scaler, which may raise the scale)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def keep_step(self, finite: bool, step: int) -> bool:
        """Apply `nonfinite_action` to a step whose losses and grad norm are `finite` or not:
        True: take the step; False: skipped (fp16), the loss scale lowered by the scaler's
        backoff factor; raises FloatingPointError when a bf16/fp32 run diverged."""
        action = nonfinite_action(self.name, finite)
        if action == "stop":
            raise FloatingPointError(
                f"non-finite training loss at step {step} (loss or gradient norm); lower "
                "--lr, set --grad-clip or use --precision fp32 (the last checkpoint is intact)"
            )
        if action == "skip":
            self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())
        return action == "step"

    @property
    def loss_scale(self) -> float | None:
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
