"""What every command shares: one-line errors, the final JSON line, devices, progress bars."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import torch
from tqdm import tqdm

from iddpm import distributed

# Exceptions that carry a message meant for the user (raised by library code on bad input).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, ImportError)


class Group(click.Group):
    """A click group that turns user errors into one line on stderr and exit code 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(message) from e


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"iddpm: error: {self.format_message()}", err=True)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def emit(result: dict[str, Any], save_to: Path | None = None) -> None:
    """Print the command's result as one JSON object on the last line of stdout (rank 0),
    and write the same object to `save_to` when given."""
    if not distributed.is_main():
        return
    text = json.dumps(_clean(result), sort_keys=False)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        save_to.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def pick_device(name: str) -> torch.device:
    """'auto': this rank's GPU under torchrun, else cuda:0 if available, else CPU."""
    if name == "auto":
        return distributed.device()
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available here; use --device cpu")
    return dev


@contextmanager
def progress(total: int, desc: str, unit: str) -> Iterator[tqdm]:
    """A progress bar on stderr with rate and ETA (rank 0 only)."""
    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not distributed.is_main(),
        leave=False,
    )
    try:
        yield bar
    finally:
        bar.close()


device_option = click.option(
    "--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto"
)


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory a checkpoint file belongs to (RUN/checkpoints/step_*.pt -> RUN)."""
    return (
        checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    )
