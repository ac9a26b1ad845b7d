"""From exceptions to one line on stderr and an exit code (docs/design.md §4), in one place.

- A problem with the user's input, files, disk or device (ValueError, OSError and their
  kin, a missing optional package, a damaged file): `iddpm: error: …`, exit 2.
- Ctrl-C: `iddpm: interrupted`, exit 130; SIGTERM: `iddpm: terminated`, exit 143.
  (Training catches both itself, saves a checkpoint, prints its JSON line and then exits
  with the same codes; see `_command.py`.)
- Usage errors keep click's own "Usage / Try / Error" lines, exit 2.
Anything else is a bug in iddpm and keeps its traceback.
"""

from __future__ import annotations

import errno
import pickle
import signal
import sys
import zipfile
from typing import Any

import click

USER_ERRORS = (
    ValueError,
    OSError,  # FileNotFoundError, PermissionError, IsADirectoryError, disk full, …
    ImportError,
    EOFError,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
    FloatingPointError,
)
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143

_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose another folder",
    errno.EDQUOT: "the disk quota is exhausted; free some space or choose another folder",
    errno.EROFS: "the file system is read-only; choose a writable folder",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f); raise the limit",
    errno.EACCES: "permission denied; choose a path you may write to",
    errno.EPERM: "operation not permitted; choose a path you may write to",
}


class Terminated(BaseException):
    """Raised by the SIGTERM handler so that a command unwinds like on Ctrl-C."""


def message_of(e: BaseException) -> str:
    """The one line to show for a user error."""
    if isinstance(e, OSError) and e.errno in _OS_HINTS and not _is_ours(e):
        where = f" ({e.filename})" if e.filename else ""
        return f"{e.strerror or type(e).__name__}{where}: {_OS_HINTS[e.errno]}"
    text = " ".join(str(e).split()) if str(e).strip() else type(e).__name__
    if isinstance(e, OSError) and e.strerror and e.filename and not _is_ours(e):
        text = f"{e.strerror}: {e.filename}"
    return text


def _is_ours(e: OSError) -> bool:
    # Our own messages (raised with one argument) already say what to do.
    return len(e.args) == 1 and isinstance(e.args[0], str)


class UserError(click.ClickException):
    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"iddpm: error: {self.format_message()}", err=True)


class Stopped(click.exceptions.Exit):
    """Ctrl-C or SIGTERM: one line and the conventional exit code."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(code)
        sys.stderr.write(f"iddpm: {what}\n")
        sys.stderr.flush()


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated


class Group(click.Group):
    """A click group whose commands fail with one line (see the module docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        previous = signal.getsignal(signal.SIGTERM)
        installed = _try_install(signal.SIGTERM, _on_sigterm)
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException):
            raise  # click's own exits and usage errors
        except USER_ERRORS as e:
            raise UserError(message_of(e)) from None
        except KeyboardInterrupt:
            raise Stopped(EXIT_INTERRUPTED, "interrupted") from None
        except Terminated:
            raise Stopped(EXIT_TERMINATED, "terminated") from None
        finally:
            if installed:
                signal.signal(signal.SIGTERM, previous)


def _try_install(sig: signal.Signals, handler: Any) -> bool:
    try:
        signal.signal(sig, handler)
    except ValueError:  # not the main thread (e.g. an in-process test runner thread)
        return False
    return True
