"""The click group: every command registered, and every failure turned into one line."""

from __future__ import annotations

import click

from iddpm import __version__
from iddpm.cli._errors import Group
from iddpm.cli.classify import classify
from iddpm.cli.compare import compare
from iddpm.cli.convert import convert
from iddpm.cli.demo import demo
from iddpm.cli.evaluate import fid, nll
from iddpm.cli.export import export
from iddpm.cli.prepare import prepare_data
from iddpm.cli.report import report
from iddpm.cli.sample import sample
from iddpm.cli.steps import steps
from iddpm.cli.sweep import sweep
from iddpm.cli.train import train
from iddpm.cli.train_classifier import train_classifier_command


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="iddpm")
def cli() -> None:
    """Improved DDPM: train, sample, measure bits/dim and FID."""


for command in (
    demo,
    train,
    sample,
    nll,
    fid,
    compare,
    export,
    sweep,
    steps,
    prepare_data,
    convert,
    report,
):
    cli.add_command(command)
cli.add_command(train_classifier_command)
cli.add_command(classify)
