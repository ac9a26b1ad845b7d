"""The skeleton every job command shares: --device, the process group, progress bars, the
final JSON line and the exit code of an interrupted job.

    @click.command()
    @...options...
    @job_command
    def sample(..., device, progress):
        return sample_to_files(job, device, progress)
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from iddpm.cli._errors import EXIT_INTERRUPTED, EXIT_TERMINATED
from iddpm.cli._progress import tqdm_progress
from iddpm.workflows import runtime

DEVICE_OPTION = click.option(
    "--device", default="auto", show_default=True, help=f"{runtime.DEVICE_HELP}"
)
_SIGNAL_EXIT = {"SIGINT": EXIT_INTERRUPTED, "SIGTERM": EXIT_TERMINATED}


def emit(result: dict[str, Any]) -> None:
    """The command's result as one JSON object on the last line of stdout (rank 0)."""
    if runtime.is_main():
        sys.stdout.write(runtime.result_json(result) + "\n")
        sys.stdout.flush()


def job_command(fn: Callable[..., dict[str, Any]]) -> Callable[..., None]:
    """Wrap a command body `fn(**options, device=torch.device, progress=Progress) -> dict`:
    add --device, join the process group, run, print the result, leave the group. A job
    that reports it was stopped by a signal (training saves first) exits 130 or 143."""

    @DEVICE_OPTION
    @functools.wraps(fn)
    def command(device: str, **options: Any) -> None:
        dev = runtime.start(device)
        try:
            result = fn(**options, device=dev, progress=tqdm_progress)
            emit(result)
        finally:
            runtime.finish()
        code = _SIGNAL_EXIT.get(result.get("signal") or "")
        if code is not None:
            click.echo(f"iddpm: stopped by {result['signal']} (checkpoint saved)", err=True)
            raise click.exceptions.Exit(code)

    return command
