"""Every choice list is written once: what the configs accept, what the command line offers
and what the registry (or the module that implements the choice) knows agree."""

from __future__ import annotations

import click
import pytest

from iddpm import config
from iddpm.cli import cli
from iddpm.diffusion import registry, respace
from iddpm.eval.features import EXTRACTORS
from iddpm.workflows.steps import STEP_SIGMAS


def _choices(command: str, option: str) -> tuple[str, ...]:
    (param,) = [p for p in cli.commands[command].params if f"--{option}" in p.opts]
    assert isinstance(param.type, click.Choice), (command, option)
    return tuple(param.type.choices)


def test_the_bound_sigmas_are_the_registry_table() -> None:
    assert tuple(registry.SIGMAS) == config.EVAL_SIGMAS
    assert _choices("nll", "sigma") == config.EVAL_SIGMAS
    assert set(STEP_SIGMAS) <= set(registry.SIGMAS) and _choices("steps", "sigma") == STEP_SIGMAS
    assert {e.bound_sigma for e in map(registry.get, registry.names())} - {None} <= set(STEP_SIGMAS)


def test_features_spacings_and_splits() -> None:
    assert _choices("fid", "features") == _choices("sweep", "features") == EXTRACTORS
    assert _choices("sweep", "spacing") == ("even", *respace.SPACINGS, "best")
    for command, option in (("nll", "split"), ("steps", "split"), ("fid", "ref-split")):
        assert _choices(command, option) == config.SPLITS
    for prefix in respace.SPACINGS:  # every prefix parses
        assert len(respace.parse_steps(f"{prefix}5", 100, alphas_cumprod=_abar(100))) == 5


def _abar(t: int):
    import torch

    return torch.linspace(0.999, 0.01, t, dtype=torch.float64)


@pytest.mark.parametrize("command", ["sample", "sweep", "demo"])
def test_every_sampler_and_option_is_offered(command: str) -> None:
    params = cli.commands[command].params
    text = " ".join(p.help or "" for p in params if isinstance(p, click.Option))
    assert all(name in text for name in registry.names())
    flags = {o for p in params for o in p.opts}
    assert {f"--{k.replace('_', '-')}" for k in registry.cli_options()} <= flags


@pytest.mark.parametrize("section", [config.DiffusionConfig, config.UNetConfig, config.TrainConfig])
def test_every_config_field_declares_its_flag_help_and_choices(section) -> None:
    import dataclasses

    params = {p.name: p for p in cli.commands["train"].params}
    for f in dataclasses.fields(section):
        assert f.metadata.get("help"), f"{section.__name__}.{f.name} has no help"
        param = params[
            f"{section.__name__.removesuffix('Config').lower().replace('unet', 'model')}__{f.name}"
        ]
        assert (param.help or "").startswith(f.metadata["help"])
        if "choices" in f.metadata:
            assert tuple(param.type.choices) == f.metadata["choices"]
            with pytest.raises(ValueError, match="choose one of"):
                section(**{f.name: "no-such-choice"})
