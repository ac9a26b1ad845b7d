"""The `iddpm` command line: one command per module of this package, registered in
`_app.py` (`iddpm --help` lists them).

Progress bars and logs go to stderr; every command ends with one JSON object on the last
line of stdout. Bad input gives one line on stderr and exit code 2; Ctrl-C exits 130 and
SIGTERM 143 (docs/design.md §4).

Multi-GPU, one node:   torchrun --nproc_per_node 8 -m iddpm train --preset cifar10 ...
Several nodes:         torchrun --nnodes 2 --node_rank R --nproc_per_node 8 \\
                         --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m iddpm train ...
"""

from __future__ import annotations

import sys

from iddpm.cli import _startup  # noqa: F401  (must run before torch loads)


def main() -> None:
    """Entry point of the console script: a Ctrl-C while the heavy modules are still
    loading exits quietly with 130, like one during a command."""
    try:
        from iddpm.cli._app import cli
    except KeyboardInterrupt:
        sys.stderr.write("iddpm: interrupted\n")
        sys.exit(130)
    cli(prog_name="iddpm")


def __getattr__(name: str):
    # `from iddpm.cli import cli` (the tests' in-process runner) without importing click,
    # torch and every command when only main() is needed.
    if name == "cli":
        from iddpm.cli._app import cli

        return cli
    raise AttributeError(f"module 'iddpm.cli' has no attribute {name!r}")
