"""What the ablation trains and measures: objectives, units, arms and the shared budget.

An *arm* is one row of the paper's Tables 1–2: (noise schedule, T, objective, σ² choice).
A *unit* is one trained model: (schedule, T, objective, seed). L_simple ignores Σ (P9), so
one L_simple model serves both fixed-variance arms σ² = β and σ² = β̃, evaluated twice
with the other `var_type`. Every unit gets the same model (the digits preset UNet),
optimiser, batch, step count and evaluation (`Settings`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Objective:
    """How one objective is trained, and the variances (σ² choices) it is evaluated with.

    loss, train_var_type, timestep_sampler: the DiffusionConfig fields of its units;
    eval_var_types: one arm per entry (L_simple: fixed-large and fixed-small, P8)."""

    name: str
    label: str
    loss: str
    train_var_type: str
    timestep_sampler: str
    eval_var_types: tuple[str, ...]

    @property
    def learns_variance(self) -> bool:
        return self.train_var_type == "learned-range"


OBJECTIVES: dict[str, Objective] = {
    objective.name: objective
    for objective in (
        Objective(
            "simple", "L_simple", "simple", "fixed-large", "uniform", ("fixed-large", "fixed-small")
        ),
        Objective("hybrid", "L_hybrid", "hybrid", "learned-range", "uniform", ("learned-range",)),
        Objective(
            "vlb-uniform", "L_vlb, uniform t", "vlb", "learned-range", "uniform", ("learned-range",)
        ),
        Objective(
            "vlb-importance",
            "L_vlb, importance t",
            "vlb",
            "learned-range",
            "importance",
            ("learned-range",),
        ),
    )
}
SIGMA_LABELS = {"fixed-large": "σ²=β", "fixed-small": "σ²=β̃", "learned-range": "learned Σ"}


def get_objective(name: str) -> Objective:
    """The objective called `name`; a one-line ValueError listing the known ones if none."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {list(OBJECTIVES)}")
    return OBJECTIVES[name]


@dataclass(frozen=True)
class Unit:
    """One trained model of the ablation."""

    schedule: str
    timesteps: int
    objective: str
    seed: int

    @property
    def name(self) -> str:
        """The unit's folder name in the cache, e.g. "cosine-T1000-hybrid-s0"."""
        return f"{self.schedule}-T{self.timesteps}-{self.objective}-s{self.seed}"


@dataclass(frozen=True, order=True)
class Arm:
    """One row of the paper's tables: a (schedule, T, objective) evaluated with a σ² choice.
    Its units differ only in the seed. Ordered field by field (ties in sorted numbers)."""

    schedule: str
    timesteps: int
    objective: str
    var_type: str

    @property
    def label(self) -> str:
        """e.g. "cosine T=1000 L_hybrid (learned Σ)"."""
        objective = OBJECTIVES[self.objective].label
        return f"{self.schedule} T={self.timesteps} {objective} ({SIGMA_LABELS[self.var_type]})"

    def sort_key(self) -> tuple[int, bool, int, bool]:
        """Report order: T, then linear before cosine, then objective, σ²=β first."""
        return (
            self.timesteps,
            self.schedule != "linear",
            list(OBJECTIVES).index(self.objective),
            self.var_type != "fixed-large",
        )


@dataclass(frozen=True)
class Recipe:
    """An objective with the σ² choice it is evaluated with: an arm without its schedule and
    T, which the verdicts compare across schedules and chain lengths."""

    objective: str
    var_type: str

    def at(self, schedule: str, timesteps: int) -> Arm:
        return Arm(schedule, timesteps, self.objective, self.var_type)


@dataclass(frozen=True)
class Settings:
    """The budget every unit gets (nothing is tuned per arm).

    train_steps: optimiser steps per unit (batch size, lr, EMA: the digits preset);
    nll_images: the first N test digits (the same subset for every arm);
    fid_samples: samples per (arm, K); sample_steps: strided K values (P14), plus the full
    chain when T <= full_chain_max_t; curve_window: moving-average window (steps) for the
    smoothness statistics, computed over the second half of training.
    """

    train_steps: int = 1500
    nll_images: int = 100
    fid_samples: int = 192
    sample_steps: tuple[int, ...] = (25, 50, 100, 250)
    full_chain_max_t: int = 1000
    eval_seed: int = 0
    nll_batch: int = 100
    timestep_batch: int = 10
    curve_window: int = 51
    grid_images: int = 64


def default_plan(
    seeds: Sequence[int] = (0, 1),
    linear_seeds: Sequence[int] = (0,),
    timesteps: int = 1000,
    long_timesteps: int = 4000,
    long_objectives: Sequence[str] = ("hybrid", "vlb-importance"),
) -> list[Unit]:
    """Units in priority order: the first seed of each schedule at T, then the long-T
    cosine arms, then further seeds (so a budget cut still leaves comparable arms)."""
    objectives = list(OBJECTIVES)
    plan = [Unit("cosine", timesteps, name, seeds[0]) for name in objectives]
    if linear_seeds:
        plan += [Unit("linear", timesteps, name, linear_seeds[0]) for name in objectives]
    long_units = [Unit("cosine", long_timesteps, name, seeds[0]) for name in long_objectives]
    plan += long_units[:1]
    for seed in seeds[1:]:
        plan += [Unit("cosine", timesteps, name, seed) for name in objectives]
    plan += long_units[1:]
    for seed in linear_seeds[1:]:
        plan += [Unit("linear", timesteps, name, seed) for name in objectives]
    return plan


def sample_step_counts(timesteps: int, settings: Settings) -> list[int]:
    """The K values evaluated for a T-step model: those below T, then T (the full chain)
    when T <= settings.full_chain_max_t."""
    strided = [k for k in settings.sample_steps if k < timesteps]
    return strided + ([timesteps] if timesteps <= settings.full_chain_max_t else [])
