"""Process set-up shared by every job: the process group, the device, rank 0.

`start(device)` joins the torchrun process group when there is one and resolves the device
name; `finish()` leaves the group. Both are safe in a plain single process.
"""

from __future__ import annotations

import torch

from iddpm import distributed
from iddpm._io import dumps

DEVICE_HELP = "cpu, cuda, cuda:N or auto"


def pick_device(name: str) -> torch.device:
    """'auto': this rank's GPU under torchrun, else cuda:0 if available, else the CPU.

    Any other name must be a device this machine has; a one-line ValueError otherwise.
    """
    if name == "auto":
        return distributed.device()
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device name; use {DEVICE_HELP}") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"--device {name}: iddpm runs on CUDA GPUs or the CPU; use {DEVICE_HELP}")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(
            f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s); "
            f"use cuda:0 … cuda:{torch.cuda.device_count() - 1}"
        )
    return dev


def start(device: str = "auto") -> torch.device:
    """Validate the device name, then join the process group (if launched by torchrun)."""
    dev = pick_device(device) if device != "auto" else None
    distributed.init()
    return dev if dev is not None else distributed.device()


def finish() -> None:
    """Leave the process group (no-op without one)."""
    distributed.shutdown()


def is_main() -> bool:
    """True on rank 0, the process that writes files and prints results."""
    return distributed.is_main()


def result_json(result: dict) -> str:
    """A job's result as one line of standard JSON (non-finite numbers become null)."""
    return dumps(result)
