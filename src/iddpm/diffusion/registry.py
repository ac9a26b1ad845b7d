"""The sampler registry: a name → one sampler loop and its typed options (docs/design.md §2).

Configs and commands name a sampler; nobody branches on it. Every entry's loop has the one
loop contract of `samplers.py` (`SamplerLoop`):

    loop(denoise: Denoiser, x: x_T, noise: NoiseSource, **options) -> Iterator[SamplerStep]

(`samplers.start` builds the three arguments from the shared keywords: shape or noise,
generator, clip_denoised, model_kwargs, device, dtype), and its options are a frozen
dataclass whose fields are the keyword options (validated in `__post_init__` with one-line
errors). A field with `metadata={"cli": False}` is supplied by
the caller's workflow (e.g. statistics estimated from data), not by a command-line flag;
`metadata={"help": ...}` documents the rest. A field with `metadata={"statistic": NAME}`
receives the statistic NAME of `STATISTICS` (e.g. Analytic-DPM's Γ), which the entry lists
in `statistics`; workflows estimate each statistic once per checkpoint and step spacing
(and cache it), and the contract test estimates it on the Gaussian oracle
(`SamplerEntry.from_data`). `tests/diffusion/test_registry.py` runs one contract over every
registered entry, so a new sampler is checked the moment it is registered here.

What the rest of the package needs to know about a sampler is said here, at `register`,
and nowhere else (nobody outside this module compares a sampler's name):

    label        how reports and leaderboards name it
    bound_sigma  the reverse variance Σ of its K-step bound ("model", "analytic"), or None
                 for samplers whose K-step process defines no likelihood (the ODE solvers)
    statistics   the statistics it needs, names of `STATISTICS`
    ode          True for a deterministic sampler (a probability-flow ODE solver)
    calls        network calls for K steps (default K)
    spacing      the step spacing measured best for it at 5–20 calls ("karras", "trailing",
                 …; "" = even, where not measured), which `sweep --spacing best` and the
                 demo's leaderboard use (digits4k, benchmarks/results/fewstep_digits4k.json)
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from iddpm.diffusion import analytic, sigma_solvers, unipc
from iddpm.diffusion.dpm_solver import (
    DPMOptions,
    SDEOptions,
    dpmpp_2m_loop,
    dpmpp_2m_sde_loop,
    dpmpp_3m_loop,
)
from iddpm.diffusion.gaussian import GaussianDiffusion
from iddpm.diffusion.samplers import (
    SamplerLoop,
    SamplerStep,
    ancestral_loop,
    ddim_loop,
    run_to_end,
    start,
)

StepsFn = SamplerLoop

DEFAULT = "ancestral"  # the paper's sampler: what a request that names none gets


@dataclass(frozen=True)
class Statistic:
    """A per-step statistic of a model on data that samplers (and bounds) need: `estimate`
    is (model_fn, diffusion, x0 [M, C, H, W], *, seed, model_kwargs, progress) -> [K]
    float64 table of the process `diffusion` (one value per step)."""

    name: str
    estimate: Callable[..., torch.Tensor]
    summary: str


STATISTICS: dict[str, Statistic] = {
    "gamma": Statistic(
        "gamma",
        analytic.estimate_eps_moments,
        "Analytic-DPM's Γ_n = E‖ε_θ(x_n, n)‖²/d of each step, from training images",
    ),
}


@dataclass(frozen=True)
class Sigma:
    """A reverse variance Σ for the K-step bound: the statistics it needs and its [K]
    table for a process, given those statistics (None: the model's own)."""

    name: str
    statistics: tuple[str, ...]
    table: Callable[[GaussianDiffusion, Mapping[str, torch.Tensor]], torch.Tensor | None]
    help: str


SIGMAS: dict[str, Sigma] = {
    s.name: s
    for s in (
        Sigma("model", (), lambda d, st: None, "the model's own (learned or fixed)"),
        Sigma(
            "analytic",
            ("gamma",),
            lambda d, st: analytic.analytic_variance(d, st["gamma"]),
            "Analytic-DPM's optimum (Γ from training images)",
        ),
        Sigma(
            "fixed-small",
            (),
            lambda d, st: torch.exp(d.posterior_log_variance_clipped),
            "the posterior's β̃ (the decoder's clipped to the next step's)",
        ),
        Sigma("fixed-large", (), lambda d, st: d.fixed_large_variance.clone(), "β"),
    )
}


def _one_call_per_step(k: int) -> int:
    return k


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
    """One registered sampler: its loop, its options type, a one-line summary, and what the
    rest of the package knows about it (see the module docstring)."""

    name: str
    steps: StepsFn
    options: type
    summary: str
    label: str
    bound_sigma: str | None = None
    statistics: tuple[str, ...] = ()
    ode: bool = False
    calls: Callable[[int], int] = _one_call_per_step
    spacing: str = ""

    def steps_for_calls(self, nfe: int) -> int:
        """The most steps K whose network calls fit in `nfe` (at least 1)."""
        k = max(int(nfe), 1)
        while k > 1 and self.calls(k) > nfe:
            k -= 1
        return k

    def option_fields(self, cli_only: bool = False) -> tuple[dataclasses.Field, ...]:
        fields = dataclasses.fields(self.options)
        return tuple(f for f in fields if not cli_only or f.metadata.get("cli", True))

    @property
    def from_data(self) -> Callable[..., Any] | None:
        """None for a sampler that needs no statistics; else a function (model_fn,
        diffusion, x0, **kw) -> its default options with every statistic estimated on x0
        (keywords go to each statistic's `estimate`)."""
        if not self.statistics:
            return None

        def from_data(model_fn: Any, diffusion: GaussianDiffusion, x0: Any, **kw: Any) -> Any:
            values = {
                s: STATISTICS[s].estimate(model_fn, diffusion, x0, **kw) for s in self.statistics
            }
            return with_statistics(self.name, self.options(), values)

        return from_data


_REGISTRY: dict[str, SamplerEntry] = {}


def register(
    name: str,
    steps: StepsFn,
    options: type = NoOptions,
    summary: str = "",
    *,
    label: str | None = None,
    bound_sigma: str | None = None,
    statistics: tuple[str, ...] = (),
    ode: bool = False,
    calls: Callable[[int], int] = _one_call_per_step,
    spacing: str = "",
) -> None:
    """Add a sampler under `name` (lower-case, no spaces); a name is registered once.
    The keywords are what the package knows about it (module docstring); `label`
    defaults to the name."""
    if name in _REGISTRY:
        raise ValueError(f"a sampler named {name!r} is already registered")
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"options of sampler {name!r} must be a dataclass type")
    if bound_sigma is not None and bound_sigma not in SIGMAS:
        raise ValueError(f"bound_sigma of sampler {name!r} must be one of {tuple(SIGMAS)}")
    unknown = [s for s in statistics if s not in STATISTICS]
    if unknown:
        raise ValueError(f"sampler {name!r} needs unknown statistics {unknown}")
    fed = {f.metadata.get("statistic") for f in dataclasses.fields(options)} - {None}
    if fed != set(statistics):
        raise ValueError(
            f"sampler {name!r}: the option fields marked with a statistic ({sorted(fed)}) "
            f"must be exactly its statistics ({sorted(statistics)})"
        )
    _REGISTRY[name] = SamplerEntry(
        name,
        steps,
        options,
        summary,
        label or name,
        bound_sigma,
        tuple(statistics),
        ode,
        calls,
        spacing,
    )


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


def with_statistics(name: str, options: Any, values: Mapping[str, Any]) -> Any:
    """`options` of sampler `name` with each statistic of `values` (name -> [K] table) put
    into the option field that receives it."""
    entry = get(name)
    fields = {
        f.metadata["statistic"]: f.name for f in entry.option_fields() if "statistic" in f.metadata
    }
    missing = [s for s in entry.statistics if s not in values]
    if missing:
        raise ValueError(f"sampler {name!r} needs the statistics {missing}")
    updates = {
        fields[s]: tuple(torch.as_tensor(values[s]).reshape(-1).tolist()) for s in entry.statistics
    }
    return dataclasses.replace(options, **updates)


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


def iterate(
    name: str,
    model_fn: Callable[..., torch.Tensor],
    diffusion: GaussianDiffusion,
    *,
    options: Any = None,
    **common: Any,
) -> Iterator[SamplerStep]:
    """The steps of sampler `name` (one `SamplerStep` per yield), arguments as in `sample`."""
    entry = get(name)
    if options is None:
        options = entry.options()
    elif not isinstance(options, entry.options):
        raise TypeError(
            f"sampler {name!r} takes {entry.options.__name__}, got {type(options).__name__}"
        )
    return entry.steps(*start(model_fn, diffusion, **common), **options_dict(options))


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
    keywords of `samplers.start` (shape or noise, generator, clip_denoised, model_kwargs,
    device, dtype); callback(step) sees every step.
    """
    return run_to_end(iterate(name, model_fn, diffusion, options=options, **common), callback)


register(
    "ancestral",
    ancestral_loop,
    NoOptions,
    "the paper's sampler: x_{t-1} ~ N(mu_theta, Sigma_theta) (fixed or learned Sigma)",
    bound_sigma="model",
)
register(
    "ddim",
    ddim_loop,
    DDIMOptions,
    "DDIM(eta) of Song et al. 2021 (eta = 0: deterministic)",
    ode=True,  # at its default eta = 0
)
register(
    "dpmpp2m",
    dpmpp_2m_loop,
    DPMOptions,
    "DPM-Solver++(2M) of Lu et al. 2022: deterministic, second order, one call per step",
    ode=True,
    spacing="karras",
)
register(
    "dpmpp3m",
    dpmpp_3m_loop,
    DPMOptions,
    "third-order multistep DPM-Solver++: beats dpmpp2m from ~40 steps of 'logsnrK' spacing",
    ode=True,
)
register(
    "dpmpp2m-sde",
    dpmpp_2m_sde_loop,
    SDEOptions,
    "SDE-DPM-Solver++(2M) of Lu et al. 2022: stochastic, second order, one call per step",
    spacing="trailing",
)
register(
    "analytic",
    analytic.analytic_loop,
    analytic.AnalyticOptions,
    "ancestral with Analytic-DPM's optimal variance (Bao et al. 2022), Gamma from training images",
    bound_sigma="analytic",
    statistics=("gamma",),
)
register(
    "unipc",
    unipc.unipc_loop,
    unipc.UniPCOptions,
    "UniPC of Zhao et al. 2023 (bh2): multistep predictor + corrector, one call per step",
    ode=True,
    spacing="trailing",
)
register(
    "ipndm",
    sigma_solvers.ipndm_loop,
    sigma_solvers.IPNDMOptions,
    "iPNDM (Zhang & Chen 2023): 4th-order Adams-Bashforth in sigma, one call per step",
    ode=True,
    spacing="karras",
)
register(
    "heun",
    sigma_solvers.heun_loop,
    NoOptions,
    "EDM's Heun (Karras et al. 2022): 2nd order, 2 calls per step (K steps: 2K-1 calls)",
    ode=True,
    calls=sigma_solvers.heun_calls,
    spacing="karras",
)
register(
    "euler-ancestral",
    sigma_solvers.euler_ancestral_loop,
    sigma_solvers.EulerAncestralOptions,
    "k-diffusion's Euler ancestral: Euler step in sigma plus fresh noise, one call per step",
    spacing="trailing",
)
