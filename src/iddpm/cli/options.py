"""Config dataclass fields as click options: one flag per field, strings only at this edge.

A field's help, choices and (where it differs from the field name) flag are declared on the
field itself (`config.option`); sampler options carry theirs on their options dataclass."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from iddpm.config import (
    EVAL_SIGMAS,
    MC_METHODS,
    SPLITS,
    DiffusionConfig,
    ExperimentConfig,
    TrainConfig,
    UNetConfig,
)
from iddpm.workflows.sample import sampler_cli_options, sampler_names
from iddpm.workflows.statistics import StatsConfig

SECTIONS: dict[str, type] = {
    "diffusion": DiffusionConfig,
    "model": UNetConfig,
    "train": TrainConfig,
}


def _field(name: str) -> dataclasses.Field:
    return next(f for cls in SECTIONS.values() for f in dataclasses.fields(cls) if f.name == name)


def flag_name(field: str) -> str:
    """The flag of a config field: the field's name with dashes, or its metadata's "flag"."""
    return _field(field).metadata.get("flag", field.replace("_", "-"))


def _base_type(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def _option(section: str, f: dataclasses.Field) -> Callable:
    hints = typing.get_type_hints(SECTIONS[section])
    tp = _base_type(hints[f.name])
    name = flag_name(f.name)
    dest = f"{section}__{f.name}"
    help_ = f.metadata.get("help", f.name)  # declared on the field (config.option)
    if tp is bool:
        return click.option(f"--{name}/--no-{name}", dest, default=None, help=help_)
    if typing.get_origin(tp) is tuple:
        elem = typing.get_args(tp)[0]
        return click.option(
            f"--{name}", dest, default=None, type=_TupleType(elem), help=help_ + " (comma list)"
        )
    if "choices" in f.metadata:
        choice = click.Choice(f.metadata["choices"])
        return click.option(f"--{name}", dest, default=None, type=choice, help=help_)
    return click.option(f"--{name}", dest, default=None, type=tp, help=help_)


class _TupleType(click.ParamType):
    name = "list"

    def __init__(self, elem: type) -> None:
        self.elem = elem

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(self.elem(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(
                f"{value!r} is not a comma-separated list of {self.elem.__name__}", param, ctx
            )


def experiment_options(func: Callable) -> Callable:
    """Add one option per field of the diffusion, model and train configs."""
    for section, cls in reversed(SECTIONS.items()):
        for f in reversed(dataclasses.fields(cls)):
            func = _option(section, f)(func)
    return func


def apply_overrides(cfg: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    """Replace the fields given on the command line (None = not given). Errors name the
    flags (--batch-size), not the config fields (batch_size)."""
    try:
        return _apply_overrides(cfg, values)
    except ValueError as e:
        raise ValueError(_with_flag_names(str(e))) from None


def _with_flag_names(message: str) -> str:
    # Field names with an underscore are replaced wherever they stand; one-word names
    # (data, steps, seed, …) only where they are the subject of a rule, so prose stays prose.
    fields = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    for name in sorted(fields, key=len, reverse=True):
        tail = "" if "_" in name else r"(?=(=| must| is | does ))"
        message = re.sub(rf"(?<![-\w]){name}(?![\w]){tail}", f"--{flag_name(name)}", message)
    return message


def _apply_overrides(cfg: ExperimentConfig, values: dict[str, Any]) -> ExperimentConfig:
    changes: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for key, value in values.items():
        if "__" in key and value is not None:
            section, field = key.split("__", 1)
            changes[section][field] = value
    d = cfg.to_dict()
    for section, fields in changes.items():
        d[section].update({k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()})
    return ExperimentConfig.from_dict(d)


def changed_fields(values: dict[str, Any]) -> list[str]:
    return [k.split("__", 1)[1] for k, v in values.items() if "__" in k and v is not None]


SAMPLER_PREFIX = "sampler_opt__"


def sampler_options(func: Callable) -> Callable:
    """Add --sampler and one flag per option of any registered sampler (e.g. --eta)."""
    for name, (tp, help_, users) in reversed(sampler_cli_options().items()):
        text = f"{help_} (sampler{'s' if len(users) > 1 else ''} {', '.join(users)})"
        flag = f"--{name.replace('_', '-')}"
        func = click.option(flag, f"{SAMPLER_PREFIX}{name}", type=tp, default=None, help=text)(func)
    return func


def sampler_choice(multiple: bool = False) -> Callable:
    """--sampler NAME (or --samplers A,B for sweeps), checked against the registry."""
    names = ", ".join(sampler_names())
    if multiple:
        return click.option(
            "--samplers",
            default="ancestral",
            show_default=True,
            help=f"comma list of samplers to compare; registered: {names}",
        )
    return click.option(
        "--sampler", default="ancestral", show_default=True, help=f"sampler: {names}"
    )


def pop_sampler_options(values: dict[str, Any]) -> dict[str, Any]:
    """The sampler flags the user gave, as {option: value}, removed from `values`."""
    keys = [k for k in values if k.startswith(SAMPLER_PREFIX)]
    given = {k[len(SAMPLER_PREFIX) :]: values.pop(k) for k in keys}
    return {k: v for k, v in given.items() if v is not None}


def stats_options(func: Callable) -> Callable:
    """--stats-data and --stats-images: the training images that statistics estimated from
    the model (Analytic-DPM's Γ) come from."""
    func = click.option(
        "--stats-images",
        type=int,
        default=1000,
        show_default=True,
        help="training images for statistics that samplers/bounds estimate (analytic)",
    )(func)
    return click.option(
        "--stats-data",
        default="",
        help="data SPEC of those images (default: the data the model trained on)",
    )(func)


def pop_stats_config(values: dict[str, Any], seed: int = 0) -> StatsConfig:
    """The StatsConfig of the --stats-* flags, removed from `values`."""
    return StatsConfig(
        data=values.pop("stats_data"), num_images=values.pop("stats_images"), seed=seed
    )


def compile_option(func: Callable) -> Callable:
    """--compile for sample and nll: a torch.compile'd forward, its cache kept in the run."""
    return click.option(
        "--compile",
        "compile_",
        is_flag=True,
        help="torch.compile the network (pays for long jobs; cache kept in RUN/cache)",
    )(func)


def run_options(default_dir: str, holds: str) -> Callable[[Callable], Callable]:
    """--run-dir, --resume, --max-minutes and --print-config, shared by the commands that
    train (train, train-classifier); `holds` says what the run folder receives."""

    def decorate(func: Callable) -> Callable:
        for option in reversed(
            [
                click.option(
                    "--run-dir",
                    type=click.Path(path_type=Path),
                    default=Path(default_dir),
                    show_default=True,
                    help=f"where {holds} go (must not hold a run unless --resume)",
                ),
                click.option(
                    "--resume",
                    is_flag=True,
                    help="continue exactly from the run's latest checkpoint",
                ),
                click.option(
                    "--max-minutes",
                    type=click.FloatRange(min=0, min_open=True),
                    default=None,
                    help="stop (with a checkpoint) after this much training time",
                ),
                click.option(
                    "--print-config",
                    is_flag=True,
                    help="print the resolved config as JSON and exit",
                ),
            ]
        ):
            func = option(func)
        return func

    return decorate


def shard_options(default: int, shard: str, job_dir: str) -> Callable[[Callable], Callable]:
    """--shard-size and --job-dir of the resumable jobs (sample, nll, fid): `shard` says
    what a shard holds, `job_dir` where the shards live by default."""

    def decorate(func: Callable) -> Callable:
        func = click.option(
            "--job-dir",
            type=click.Path(path_type=Path),
            default=None,
            help=f"keep the shards here (default: {job_dir}, removed when done)",
        )(func)
        return click.option(
            "--shard-size",
            type=click.IntRange(min=1),
            default=default,
            show_default=True,
            help=f"{shard} per shard: a killed job rerun with the same command resumes from them",
        )(func)

    return decorate


POSITIVE = click.IntRange(min=1)
_BOUND_OPTIONS = [
    click.option("--data", default="", help="data SPEC (default: the data the model trained on)"),
    click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True),
    click.option(
        "--num-images",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="first N images (0: all)",
    ),
    click.option("--steps", default="", help="evaluate the bound of a strided process (step spec)"),
    click.option("--batch-size", type=POSITIVE, default=64, show_default=True, help="images/batch"),
    click.option(
        "--timestep-batch",
        type=POSITIVE,
        default=16,
        show_default=True,
        help="timesteps per network call",
    ),
    click.option(
        "--mc",
        "mc_timesteps",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="unbiased Monte-Carlo estimate from K timesteps per image (0: exact)",
    ),
    click.option(
        "--mc-method",
        type=click.Choice(MC_METHODS),
        default="log-stratified",
        show_default=True,
        help="how --mc draws its timesteps (log-stratified: exact first steps, geometric strata)",
    ),
    click.option(
        "--seed",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="seed of the forward-process noise",
    ),
    click.option(
        "--sigma",
        type=click.Choice(EVAL_SIGMAS),
        default="model",
        show_default=True,
        help="reverse variance of the bound: the model's own, Analytic-DPM's optimum "
        "(estimated from training images, cached in the run), or fixed beta-tilde / beta",
    ),
]


def bound_options(func: Callable) -> Callable:
    """The options of a bound evaluation (nll, classify): the data (--data, --split,
    --num-images), the estimator (--steps, --mc, --mc-method, --seed, --sigma) and the
    batching (--batch-size, --timestep-batch); they map one to one onto EvalConfig."""
    for option in reversed(_BOUND_OPTIONS):
        func = option(func)
    return func
