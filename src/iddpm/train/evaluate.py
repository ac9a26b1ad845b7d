"""Periodic evaluation during training: held-out and training bits/dim, and sample quality.

Every `eval_every` steps (TrainConfig) the evaluator scores the slowest EMA's weights:
- the unbiased Monte-Carlo bits/dim (diffusion/likelihood_mc.py, log-stratified, K steps
  per image, with its standard error) of a fixed held-out set and of a fixed training
  subset of the same size, with common random numbers: image i's steps and noise come
  from its own generator seeded from (seed, i), at every evaluation and in both sets, so
  the curves move only when the model does;
- from the same network calls: the learned-range interpolation v per quartile of t (how
  far the learned Σ sits between β̃ and β) and the bound's terms per stratum;
- every `fid_every` steps, a score function the caller passes in (FID of samples; the
  trainer knows nothing of samplers or feature extractors).

Determinism: images are evaluated in fixed chunks of CHUNK; chunk c runs on rank c mod W
and each rank writes its chunks' values into a full-size table that is summed over ranks,
so every number is the same on 1 or W ranks (same chunk shapes, same generators, exact
sums with zeros). The history (for the overfitting warning and `keep_best`) is part of
the trainer's checkpoint, so a resumed run logs what an uninterrupted one does.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from iddpm import distributed
from iddpm.diffusion.likelihood_mc import McMethod, _log_strata, estimate_bits_per_dim
from iddpm.diffusion.respace import ModelAdapter, timestep_scale
from iddpm.diffusion.samplers import per_sample_generators

CHUNK = 32  # images per network call (fixed, so results do not depend on the rank count)
ScoreFn = Callable[[dict[str, torch.Tensor], int], dict[str, Any]]


class OverfittingWarning(UserWarning):
    """The held-out bound has risen for a number of evaluations while the training one fell."""


@dataclass(frozen=True)
class EvalSet:
    """Images in the model's range [N, C, H, W] (and labels [N] for class-conditional
    models) that one curve is measured on."""

    images: torch.Tensor
    labels: torch.Tensor | None = None


class PeriodicEvaluator:
    """Scores a trainer's EMA weights every `every` steps (module docstring).

    heldout, train: the two fixed image sets; timesteps: K of the Monte-Carlo bound; seed:
    of the per-image generators; patience: evaluations in a row with a rising held-out
    bound (and a training bound below where it was) before `OverfittingWarning`;
    score_fn(weights, step) -> {name: value}: run every `fid_every` steps (0: never).
    """

    def __init__(
        self,
        heldout: EvalSet,
        train: EvalSet,
        *,
        every: int,
        timesteps: int = 16,
        seed: int = 0,
        patience: int = 3,
        fid_every: int = 0,
        score_fn: ScoreFn | None = None,
    ) -> None:
        if every < 1 and fid_every < 1:
            raise ValueError("the evaluator needs every >= 1 or fid_every >= 1")
        self.sets = {"heldout": heldout, "train": train}
        self.every, self.fid_every, self.score_fn = every, fid_every, score_fn
        self.timesteps, self.seed, self.patience = timesteps, seed, patience
        self.history: list[list[float]] = []  # [step, held-out bpd, training bpd]
        self.best = math.inf
        self.warned = False
        self._model: nn.Module | None = None

    # ---- when ----------------------------------------------------------------------

    def due(self, step: int) -> bool:
        return any(every and step % every == 0 for every in (self.every, self.fid_every))

    # ---- what ----------------------------------------------------------------------

    def evaluate(self, trainer: Any) -> dict[str, Any]:
        """The record of this step's evaluations (keys eval_*, fid_*), on every rank."""
        step, record = trainer.step_count, {}
        weights = trainer.inference_state_dict()
        if self.every and step % self.every == 0:
            start = time.perf_counter()
            record.update(self._bound(trainer, weights))
            record.update(self._verdict(step, record))
            record["eval_seconds"] = time.perf_counter() - start
        if self.score_fn is not None and self.fid_every and step % self.fid_every == 0:
            start = time.perf_counter()
            record.update(self.score_fn(weights, step))
            record["fid_seconds"] = time.perf_counter() - start
        return record

    def _eval_model(self, trainer: Any, weights: dict[str, torch.Tensor]) -> nn.Module:
        if self._model is None:
            self._model = copy.deepcopy(trainer.module).eval()
            for p in self._model.parameters():
                p.requires_grad_(False)
        self._model.load_state_dict(weights)
        return self._model

    def _bound(self, trainer: Any, weights: dict[str, torch.Tensor]) -> dict[str, Any]:
        model = self._eval_model(trainer, weights)
        diffusion, cfg = trainer.diffusion, trainer.cfg
        scale = timestep_scale(diffusion.num_timesteps, cfg.diffusion.rescale_timesteps)
        probe = _VarianceProbe(ModelAdapter(model, scale=scale), diffusion.num_timesteps)
        k = self.timesteps
        out: dict[str, Any] = {}
        for name, images in self.sets.items():
            table = self._table(probe, diffusion, images, trainer.device).cpu()
            total, mc_se = table[:, 0], table[:, 1]
            n = total.numel()
            out[f"eval_{name}_bpd"] = float(total.mean())
            out[f"eval_{name}_bpd_se"] = float(total.std() / math.sqrt(n)) if n > 1 else math.nan
            out[f"eval_{name}_mc_se"] = float(mc_se.pow(2).sum().sqrt() / n)
            if name != "heldout":
                continue
            out["eval_terms_bpd"] = [float(v) for v in table[:, 2 : 2 + k].mean(0)]
            v_sums, counts = table[:, 2 + k : 6 + k].sum(0), table[:, 6 + k :].sum(0)
            if cfg.diffusion.var_type == "learned-range":
                out.update({f"eval_v_q{q}": float(v_sums[q] / counts[q]) for q in range(4)})
        starts, _ = _log_strata(diffusion.num_timesteps, k)
        out["eval_strata"] = [int(s) for s in starts]
        return out

    def _table(
        self, probe: _VarianceProbe, diffusion: Any, images: EvalSet, device: torch.device
    ) -> torch.Tensor:
        """[N, 2 + K + 8] float64 per image: total bpd, its MC s.e., the weighted term of
        each stratum, Σv and the count per quartile of t; identical on every rank."""
        n, k = images.images.shape[0], self.timesteps
        table = torch.zeros(n, 2 + k + 8, dtype=torch.float64, device=device)
        rank, world = distributed.rank(), distributed.world_size()
        for c, lo in enumerate(range(0, n, CHUNK)):
            if c % world != rank:
                continue
            hi = min(lo + CHUNK, n)
            x0 = images.images[lo:hi].to(device)
            kwargs = {} if images.labels is None else {"y": images.labels[lo:hi].to(device)}
            res = estimate_bits_per_dim(
                probe,
                diffusion,
                x0,
                num_samples_per_image=k,
                method=McMethod.LOG_STRATIFIED,
                generator=per_sample_generators(self.seed, range(lo, hi)),
                model_kwargs=kwargs,
                timestep_batch=k,  # one network call per chunk: the probe sees all of it
            )
            table[lo:hi, 0] = res.total_bpd.double()
            table[lo:hi, 1] = res.stderr.double()
            table[lo:hi, 2 : 2 + k] = (res.weights * res.terms_bpd).double()
            table[lo:hi, 2 + k :] = probe.per_image(hi - lo, k).to(device)
        return distributed.all_reduce_sum(table)

    # ---- verdicts ------------------------------------------------------------------

    def _verdict(self, step: int, record: dict[str, Any]) -> dict[str, Any]:
        held, train = record["eval_heldout_bpd"], record["eval_train_bpd"]
        self.history.append([float(step), held, train])
        best = held < self.best
        if best:
            self.best = held
        rising = overfitting(self.history, self.patience)
        if rising and not self.warned and distributed.is_main():
            warnings.warn(
                OverfittingWarning(
                    f"step {step}: the held-out bound has risen for {self.patience} "
                    f"evaluations ({held:.4f} bits/dim) while the training bound fell "
                    f"({train:.4f}); the model is overfitting: more data, dropout or an "
                    "earlier checkpoint (--keep-best) help"
                ),
                stacklevel=2,
            )
        self.warned = rising
        return {"eval_best": best, "eval_overfitting": rising}

    # ---- state ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        history = [list(h) for h in self.history]
        return {"history": history, "best": self.best, "warned": self.warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [list(map(float, h)) for h in state.get("history", [])]
        self.best = float(state.get("best", math.inf))
        self.warned = bool(state.get("warned", False))


def overfitting(history: list[list[float]], patience: int) -> bool:
    """True when the held-out bound rose at each of the last `patience` evaluations while
    the training bound ended below where it was before them. history: [step, held, train]."""
    if len(history) <= patience:
        return False
    recent = history[-(patience + 1) :]
    rose = all(b[1] > a[1] for a, b in itertools.pairwise(recent))
    return rose and recent[-1][2] < recent[0][2]


class _VarianceProbe:
    """model_fn that keeps, from its last call, the learned-range interpolation
    v = (out_v + 1)/2 (mean over pixels) and t of every input: the bound's own network
    calls, so the v curve costs nothing."""

    def __init__(self, model_fn: ModelAdapter, num_timesteps: int) -> None:
        self.model_fn, self.num_timesteps = model_fn, num_timesteps
        self.v = self.t = torch.zeros(0)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        out = self.model_fn(x_t, t, **cond)
        c = x_t.shape[1]
        if out.shape[1] == 2 * c:
            self.v = ((out[:, c:].double() + 1) / 2).flatten(1).mean(1).cpu()
        else:
            self.v = torch.zeros(out.shape[0], dtype=torch.float64)
        self.t = t.cpu()
        return out

    def per_image(self, n: int, k: int) -> torch.Tensor:
        """[n, 8]: Σv and the count per quartile of t of each image (inputs are laid out
        column by column: block j holds the n images at their j-th step)."""
        v, t = self.v.reshape(k, n).t(), self.t.reshape(k, n).t()
        q = torch.div(t * 4, self.num_timesteps, rounding_mode="floor")
        onehot = torch.nn.functional.one_hot(q, 4).to(torch.float64)  # [n, k, 4]
        return torch.cat([(onehot * v[..., None]).sum(1), onehot.sum(1)], dim=1)
