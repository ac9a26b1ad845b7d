"""The `iddpm` command line: train | sample | nll | fid | convert | demo.

Progress bars and logs go to stderr; every command ends with one JSON object on the last
line of stdout. Bad input gives one line on stderr and exit code 2.

Multi-GPU, one node:   torchrun --nproc_per_node 8 -m iddpm train --preset cifar10 ...
Several nodes:         torchrun --nnodes 2 --node_rank R --nproc_per_node 8 \\
                         --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m iddpm train ...
"""

from __future__ import annotations

import click

from iddpm import __version__
from iddpm.cli import _startup  # noqa: F401  (must run before torch loads)
from iddpm.cli._common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="iddpm")
def cli() -> None:
    """Improved DDPM: train, sample, measure bits/dim and FID."""


def _register() -> None:
    from iddpm.cli.ablate import ablate
    from iddpm.cli.convert import convert
    from iddpm.cli.demo import demo
    from iddpm.cli.evaluate import fid, nll
    from iddpm.cli.sample import sample
    from iddpm.cli.sweep import sweep
    from iddpm.cli.train import train

    for command in (demo, train, sample, nll, fid, sweep, convert, ablate):
        cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="iddpm")
