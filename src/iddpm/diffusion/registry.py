"""The sampler registry: a name → one sampler loop and its typed options (docs/design.md §2).

Configs and commands name a sampler; nobody branches on it. Every entry's loop has the one
sampler signature of `samplers.py`:

    steps(model_fn, diffusion, *, shape=None, noise=None, generator=None, clip_denoised=True,
          model_kwargs=None, device=None, dtype=None, **options) -> Iterator[SamplerStep]

and its options are a frozen dataclass whose fields are the keyword options (validated in
`__post_init__` with one-line errors). A field with `metadata={"cli": False}` is supplied by
the caller's workflow (e.g. statistics estimated from data), not by a command-line flag;
`metadata={"help": ...}` documents the rest. Such an entry also registers `from_data`, a
function (model_fn, diffusion, x0 [M, C, H, W]) -> options that estimates them from
training images; workflows call it (and cache its result), and so does the contract test,
on the Gaussian oracle. `tests/diffusion/test_registry.py` runs one
contract over every registered entry, so a new sampler is checked the moment it is
registered here.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from iddpm.diffusion import analytic
from iddpm.diffusion.dpm_solver import (
    SDEOptions,
    dpmpp_2m_sde_steps,
    dpmpp_2m_steps,
    dpmpp_3m_steps,
)
from iddpm.diffusion.gaussian import GaussianDiffusion
from iddpm.diffusion.samplers import SamplerStep, ancestral_steps, ddim_steps, run_to_end

StepsFn = Callable[..., Iterator[SamplerStep]]


@dataclass(frozen=True)
class NoOptions:
    """A sampler without options."""


@dataclass(frozen=True)
class DDIMOptions:
    """DDIM(η) (P15): η = 0 is deterministic, η = 1 has the variance of fixed-small sampling."""

    eta: float = dataclasses.field(
        default=0.0, metadata={"help": "ddim: eta in [0, 1] (0 = deterministic)"}
    )

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.eta) <= 1.0:
            raise ValueError(
                f"--eta {self.eta} is outside [0, 1]; 0 is deterministic, 1 is DDPM-like"
            )


@dataclass(frozen=True)
class SamplerEntry:
    """One registered sampler: its loop, its options type, a one-line summary and, for
    options estimated from data, the function that estimates them (see module docstring)."""

    name: str
    steps: StepsFn
    options: type
    summary: str
    from_data: Callable[..., Any] | None = None

    def option_fields(self, cli_only: bool = False) -> tuple[dataclasses.Field, ...]:
        fields = dataclasses.fields(self.options)
        return tuple(f for f in fields if not cli_only or f.metadata.get("cli", True))


_REGISTRY: dict[str, SamplerEntry] = {}


def register(
    name: str,
    steps: StepsFn,
    options: type = NoOptions,
    summary: str = "",
    from_data: Callable[..., Any] | None = None,
) -> None:
    """Add a sampler under `name` (lower-case, no spaces); a name is registered once."""
    if name in _REGISTRY:
        raise ValueError(f"a sampler named {name!r} is already registered")
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"options of sampler {name!r} must be a dataclass type")
    _REGISTRY[name] = SamplerEntry(name, steps, options, summary, from_data)


def names() -> tuple[str, ...]:
    """Registered sampler names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> SamplerEntry:
    """The entry registered as `name`; a one-line ValueError lists the registered ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def make_options(name: str, values: Mapping[str, Any] | None = None) -> Any:
    """The options object of sampler `name` from plain values (strings are converted to the
    field's type). An option the sampler does not have is a one-line ValueError."""
    entry = get(name)
    fields = {f.name: f for f in entry.option_fields()}
    hints = typing.get_type_hints(entry.options)
    kwargs: dict[str, Any] = {}
    for key, value in (values or {}).items():
        if key not in fields:
            have = ", ".join(f"--{k.replace('_', '-')}" for k in fields) or "none"
            raise ValueError(
                f"option --{key.replace('_', '-')} does not apply to sampler {name!r} "
                f"(its options: {have}); drop it or choose another --sampler"
            )
        kwargs[key] = _convert(key, value, hints[key])
    return entry.options(**kwargs)


def _convert(key: str, value: Any, tp: Any) -> Any:
    if not isinstance(value, str) or tp in (str, "str"):
        return value
    base = tp if isinstance(tp, type) else None
    if base is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
    elif base in (int, float):
        try:
            return base(value)
        except ValueError:
            pass
    else:
        return value
    raise ValueError(f"option --{key.replace('_', '-')}={value!r} is not a valid {base.__name__}")


def options_dict(options: Any) -> dict[str, Any]:
    """The options as plain keyword arguments of the sampler loop."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}


def cli_options() -> dict[str, tuple[type, str, tuple[str, ...]]]:
    """Every command-line option of every sampler: name -> (type, help, samplers). An
    option several samplers share (--eta) gets each one's help, joined."""
    out: dict[str, tuple[type, str, tuple[str, ...]]] = {}
    for entry in _REGISTRY.values():
        hints = typing.get_type_hints(entry.options)
        for f in entry.option_fields(cli_only=True):
            text = f.metadata.get("help", "")
            tp, help_, users = out.get(f.name, (hints[f.name], "", ()))
            help_ = f"{help_}; {text}" if help_ and text and text not in help_ else help_ or text
            out[f.name] = (tp, help_, (*users, entry.name))
    return out


def sample(
    name: str,
    model_fn: Callable[..., torch.Tensor],
    diffusion: GaussianDiffusion,
    *,
    options: Any = None,
    callback: Callable[[SamplerStep], Any] | None = None,
    **common: Any,
) -> torch.Tensor:
    """Run sampler `name` to the end and return the last x [N, C, H, W].

    options: the sampler's options object (default: its defaults); common: the shared
    keywords of the sampler signature (shape or noise, generator, clip_denoised,
    model_kwargs, device, dtype); callback(step) sees every step.
    """
    entry = get(name)
    if options is None:
        options = entry.options()
    elif not isinstance(options, entry.options):
        raise TypeError(
            f"sampler {name!r} takes {entry.options.__name__}, got {type(options).__name__}"
        )
    loop = entry.steps(model_fn, diffusion, **common, **options_dict(options))
    return run_to_end(loop, callback)


register(
    "ancestral",
    ancestral_steps,
    NoOptions,
    "the paper's sampler: x_{t-1} ~ N(mu_theta, Sigma_theta) (fixed or learned Sigma)",
)
register("ddim", ddim_steps, DDIMOptions, "DDIM(eta) of Song et al. 2021 (eta = 0: deterministic)")
register(
    "dpmpp2m",
    dpmpp_2m_steps,
    NoOptions,
    "DPM-Solver++(2M) of Lu et al. 2022: deterministic, second order, one call per step",
)
register(
    "dpmpp3m",
    dpmpp_3m_steps,
    NoOptions,
    "third-order multistep DPM-Solver++: beats dpmpp2m from ~40 steps of 'logsnrK' spacing",
)
register(
    "dpmpp2m-sde",
    dpmpp_2m_sde_steps,
    SDEOptions,
    "SDE-DPM-Solver++(2M) of Lu et al. 2022: stochastic, second order, one call per step",
)
register(
    "analytic",
    analytic.analytic_steps,
    analytic.AnalyticOptions,
    "ancestral with Analytic-DPM's optimal variance (Bao et al. 2022), Gamma from training images",
    from_data=analytic.options_from_data,
)
