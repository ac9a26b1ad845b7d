"""The training loop: micro-batches, mixed precision, DDP, importance sampling, EMA, resume.

`Trainer.step()` follows the algorithm: split the rank's batch into micro-batches → draw t
and importance weights → per-example losses (P9–P11) → weighted mean → backward (gradient
sync on the last micro-batch only) → clip → optimizer step with linear warm-up → EMA →
update the timestep sampler with every rank's (t, loss) pairs (P13).

Batch sizes: `cfg.train.batch_size` is global. Each of W ranks gets B = batch_size / W
examples, processed in micro-batches of `cfg.train.microbatch` (0: all B at once), so
batch_size must divide by W × microbatch. Gradients equal those of the mean over the
global batch whatever W and the micro-batch size are.

Randomness, chosen so a W-rank run matches a 1-rank run with the same global batch and a
resumed run matches an uninterrupted one:
- t and weights: one draw for the whole global batch per step from a generator seeded by
  (seed, step); rank r keeps the slice [r·B, (r+1)·B). The sampler's state is identical on
  all ranks, so the draws are too.
- noise: example i of the global batch draws from a generator seeded by (seed, step, i).
- dropout: the global torch RNG is reseeded from (seed, step, rank) at each step.
No RNG stream therefore has to be carried between steps; the loader must give rank r the
r-th block of each global batch (iddpm.data.loader does).

The optimizer is AdamW(lr, weight_decay from cfg.train; the fused kernel on CPU and CUDA)
unless one is passed in; the warm-up and annealing (rules.learning_rate) scale each
parameter group's lr as it was at construction. Metrics are averaged over logging
intervals and not checkpointed: a resumed run's first record covers the steps since the
resume.

Precision (train/precision.py) resolves "auto" at construction; the resolved name is in
run()'s summary and every checkpoint ("precision"). A non-finite loss or grad norm skips
the step under fp16 (metric "skipped") and stops bf16/fp32 runs before any update.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from iddpm import checkpoint, distributed
from iddpm.config import ExperimentConfig
from iddpm.diffusion.losses import training_losses
from iddpm.diffusion.respace import ModelAdapter, timestep_scale
from iddpm.train.ema import EMA
from iddpm.train.interrupt import StopFlag
from iddpm.train.metrics import JsonlSink, RunningMeans, bucketed
from iddpm.train.precision import Precision
from iddpm.train.rules import (
    derive_seed,
    learning_rate,
    model_config_differences,
    split_batch,
    unpack_batch,
)

Hook = Callable[["Trainer"], None]


class Trainer:
    """Trains `model` on `diffusion` with batches from `batches` (see module docstring).

    model: an nn.Module called as model(x_t, timesteps, **cond) (moved to `device`);
    diffusion: the GaussianDiffusion to train (its full T steps, not a respaced one);
    batches: an iterator of per-rank batches (with state_dict()/load_state_dict() if it is
    to be resumed exactly); timestep_sampler: a UniformSampler or LossSecondMomentSampler;
    run_dir: where config.json, checkpoints and metrics.jsonl go (None: nothing written);
    hooks: callables hook(trainer), run on every rank every cfg.train.sample_every steps;
    on_step: on_step(trainer, record) after every step on rank 0, with the latest logged
    metrics (progress display; the trainer itself prints nothing);
    evaluator: a train.evaluate.PeriodicEvaluator (or anything with due(step),
    evaluate(trainer) -> record, state_dict()): run after the hooks and before the step's
    checkpoint, its records go to metrics.jsonl and its state into every checkpoint;
    loggers: objects with write(record) (e.g. TensorBoard) that see every metrics record.
    Nothing is written until `run()` starts, so a failed `resume()` leaves the run as it was;
    config.json is written after the first checkpoint of each `run()`, so a save that fails
    (a full disk) leaves it as it was too.
    """

    def __init__(
        self,
        model: nn.Module,
        diffusion: Any,
        batches: Iterator[Any],
        timestep_sampler: Any,
        cfg: ExperimentConfig,
        run_dir: str | Path | None = None,
        hooks: Sequence[Hook] = (),
        optimizer: torch.optim.Optimizer | None = None,
        device: torch.device | str | None = None,
        on_step: Callable[[Trainer, dict[str, Any]], None] | None = None,
        evaluator: Any = None,
        loggers: Sequence[Any] = (),
    ) -> None:
        tc = cfg.train
        if diffusion.num_timesteps != cfg.diffusion.num_timesteps:
            raise ValueError(
                f"the diffusion has {diffusion.num_timesteps} steps but the config says "
                f"{cfg.diffusion.num_timesteps}; build it from the same config"
            )
        self.cfg, self.diffusion, self.batches = cfg, diffusion, batches
        self.timestep_sampler, self.hooks = timestep_sampler, tuple(hooks)
        self.on_step = on_step
        self.evaluator, self.loggers = evaluator, tuple(loggers)
        self.device = torch.device(device) if device is not None else distributed.device()
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.local_batch, self.microbatch = split_batch(
            tc.batch_size, self.world_size, tc.microbatch
        )
        self.precision = Precision.for_run(tc.precision, self.device)
        _enable_grad_checkpoint(model, tc.grad_checkpoint)
        self.module = model.to(self.device)
        if tc.channels_last:
            self.module.to(memory_format=torch.channels_last)
        fused = self.device.type in ("cpu", "cuda")  # 3x faster than the per-tensor loop
        self.optimizer = optimizer or torch.optim.AdamW(
            self.module.parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=fused
        )
        # the lr schedule scales each group's own lr (cfg.train.lr for the built-in AdamW)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.net = self._wrap(self.module)
        # after the wrap: DDP has just broadcast rank 0's weights, which the EMA starts from
        self.ema = EMA(self.module, tc.ema_rates, warmup=tc.ema_warmup)
        scale = timestep_scale(diffusion.num_timesteps, cfg.diffusion.rescale_timesteps)
        self.model_fn = ModelAdapter(self._network, scale=scale)
        self.run_dir = checkpoint.run_dir(run_dir) if run_dir is not None else None
        self.metrics = RunningMeans()
        self.step_count, self._stop = 0, StopFlag()
        self._config_saved = False  # config.json written in this run() yet
        self._window = (0, time.perf_counter())  # (step, time) at the last log record
        self._noise_gen = torch.Generator()

    # ---- the algorithm ----------------------------------------------------------------

    def step(self) -> None:
        """One optimizer step on the next global batch."""
        # 1. this rank's block of the global batch, its t, importance weights and noise
        x0, cond = self._next_batch()
        t, weights, noise = self._draw(x0)
        torch.manual_seed(derive_seed(self.cfg.train.seed, self.step_count, self.rank))
        # 2. per-example losses and gradients, micro-batch by micro-batch
        self.optimizer.zero_grad(set_to_none=True)
        losses = self._forward_backward(x0, cond, t, weights, noise)
        # 3. every rank's (t, losses); unscale (fp16) and clip; skip or stop if non-finite
        table, names = self._gather(t, losses)
        grad_norm = self._unscale_and_clip()
        finite = torch.isfinite(table).all() & torch.isfinite(grad_norm)
        if not self.precision.keep_step(bool(finite), self.step_count):  # fp16 overflow
            self.metrics.add_scalar("skipped", 1.0)
        else:  # 4. lr schedule, optimizer step, EMA; 5. the sampler and metrics
            self._update()
            self.ema.update(self.module, step=self.step_count)
            self._record(table, names, grad_norm)
        self.step_count += 1

    def _draw(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's slice of the global batch's t, importance weights and noise."""
        seed, step, lo = self.cfg.train.seed, self.step_count, self.rank * self.local_batch
        gen = torch.Generator().manual_seed(derive_seed(seed, step))
        t, w = self.timestep_sampler.sample(self.local_batch * self.world_size, generator=gen)
        noise = torch.empty((self.local_batch, *x0.shape[1:]), dtype=torch.float32)
        for i in range(self.local_batch):
            self._noise_gen.manual_seed(derive_seed(seed, step, lo + i))
            torch.randn(x0.shape[1:], generator=self._noise_gen, out=noise[i])
        sl = slice(lo, lo + self.local_batch)
        dev = self.device
        return t[sl].to(dev), w[sl].to(dev), noise.to(dev, x0.dtype, non_blocking=True)

    def _forward_backward(
        self,
        x0: torch.Tensor,
        cond: dict[str, torch.Tensor],
        t: torch.Tensor,
        weights: torch.Tensor,
        noise: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Losses and gradients of the rank's batch, one micro-batch at a time."""
        n, per_example = x0.shape[0], []
        for start in range(0, n, self.microbatch):
            sl = slice(start, start + self.microbatch)
            last = start + self.microbatch >= n
            # sync gradients across ranks only on the last micro-batch
            with self._grad_sync(last):
                out = training_losses(
                    self.model_fn,
                    self.diffusion,
                    x0[sl],
                    t[sl],
                    noise=noise[sl],
                    kind=self.cfg.diffusion.loss,
                    vlb_weight=self.cfg.diffusion.vlb_weight,
                    model_kwargs={k: v[sl] for k, v in cond.items()},
                )
                # importance weights unbias the t draw (P13); m/n turns the micro-batch
                # means into one mean over the rank's batch (DDP then averages ranks).
                loss = (out["loss"] * weights[sl]).mean() * (x0[sl].shape[0] / n)
                self.precision.backward(loss)
            per_example.append({k: v.detach() for k, v in out.items()})
        return {k: torch.cat([p[k] for p in per_example]) for k in per_example[0]}

    def _unscale_and_clip(self) -> torch.Tensor:
        """Unscale (fp16) and clip the gradients. Returns the pre-clip grad norm."""
        self.precision.unscale(self.optimizer)
        params = [p for p in self.module.parameters() if p.grad is not None]
        if self.cfg.train.grad_clip > 0:
            return nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
        return nn.utils.get_total_norm([p.grad for p in params])

    def _update(self) -> None:
        """Set this step's lr (warm-up, annealing) and take the optimizer step."""
        tc = self.cfg.train
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = learning_rate(base, self.step_count, tc.warmup_steps, tc.lr_anneal_steps)
        self.precision.step(self.optimizer)

    def _gather(
        self, t: torch.Tensor, losses: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, list[str]]:
        """Every rank's (t, per-example losses) as a float64 table [global batch, 1 + k]: the
        sampler update must see the same pairs on all ranks or they drift apart (P13)."""
        names = sorted(losses)
        local = torch.stack([t.to(torch.float64)] + [losses[k].double() for k in names], 1)
        return distributed.all_gather_1d(local.flatten()).view(-1, len(names) + 1), names

    def _record(self, table: torch.Tensor, names: list[str], grad_norm: torch.Tensor) -> None:
        t_all = table[:, 0].to(torch.int64)
        self.timestep_sampler.update(t_all.cpu(), table[:, 1 + names.index("loss")].cpu())
        self.metrics.add_examples(
            t_all, self.diffusion.num_timesteps, **{k: table[:, 1 + i] for i, k in enumerate(names)}
        )
        self.metrics.add_scalar("grad_norm", grad_norm)
        if self.precision.loss_scale is not None:
            self.metrics.add_scalar("skipped", 0.0)
            self.metrics.add_scalar("loss_scale", self.precision.loss_scale)

    # ---- helpers of step() ------------------------------------------------------------

    def _wrap(self, module: nn.Module) -> nn.Module:
        # compile the bare network, then let DDP (which broadcasts rank 0's weights now)
        # drive gradient sync around it; state dicts always come from self.module.
        net: nn.Module = torch.compile(module) if self.cfg.train.compile else module
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(net, device_ids=ids)
        return net

    def _network(self, x: torch.Tensor, timesteps: torch.Tensor, **cond: Any) -> torch.Tensor:
        """The (DDP/compiled) network under autocast; outputs float32 so the diffusion
        math never runs in half precision."""
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast():
            out = self.net(x, timesteps, **cond)
        return out.float()

    def _grad_sync(self, sync: bool) -> contextlib.AbstractContextManager[Any]:
        if sync or not isinstance(self.net, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.net.no_sync()

    def _next_batch(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x0, cond = unpack_batch(next(self.batches))
        if x0.shape[0] != self.local_batch:
            raise ValueError(
                f"the loader gave a batch of {x0.shape[0]} images but each rank needs "
                f"{self.local_batch} (--batch-size {self.cfg.train.batch_size} / "
                f"{self.world_size} ranks); build the loader with batch_size={self.local_batch}"
            )
        dev = self.device
        return x0.to(dev, non_blocking=True), {k: v.to(dev) for k, v in cond.items()}

    # ---- the loop ---------------------------------------------------------------------

    def run(self, num_steps: int | None = None, max_seconds: float | None = None) -> dict:
        """Train until `num_steps` steps in total (default cfg.train.steps) have been taken.

        The count includes steps before a resume, so a resumed run stops where an
        uninterrupted one would. Logs every log_every steps, calls the hooks every
        sample_every steps, checkpoints every checkpoint_every steps and at the end.
        SIGINT/SIGTERM (→ "interrupted") or more than `max_seconds` of training
        (→ "time_limit_reached") finish the current step, write a checkpoint and return.
        A second signal aborts at once (KeyboardInterrupt) unless a checkpoint is being
        written: that write finishes first.
        Returns a summary dict.
        """
        total = self.cfg.train.steps if num_steps is None else num_steps
        if self.run_dir is not None and distributed.is_main():
            self.run_dir.create()  # the folders; config.json comes with the first checkpoint
            self._config_saved = False
        start_step, start_time = self.step_count, time.perf_counter()
        last_save, record, stopped = None, {}, (False, False)
        self._window = (self.step_count, time.perf_counter())
        with self._stop.handling_signals():
            while self.step_count < total:
                self.step()
                record = self._log_if_due() or record
                if self.on_step is not None and distributed.is_main():
                    self.on_step(self, record)
                self._after_step_events()
                self._evaluate_if_due()
                if self.step_count % self.cfg.train.checkpoint_every == 0:
                    last_save = self.step_count, self.save_checkpoint()
                elapsed = time.perf_counter() - start_time
                time_up = max_seconds is not None and elapsed > max_seconds
                stopped = self._stop.agreed(time_up, self.world_size, self.device)
                if any(stopped):
                    break
            path = last_save[1] if last_save and last_save[0] == self.step_count else None
            if path is None and self.step_count > start_step:
                path = self.save_checkpoint()
        wall = time.perf_counter() - start_time
        steps = self.step_count - start_step
        return {
            "step": self.step_count,
            "steps_run": steps,
            "interrupted": stopped[0],
            "signal": self._stop.signal_name if stopped[0] else None,
            "time_limit_reached": stopped[1],
            "checkpoint": str(path) if path else None,
            "wall_s": wall,
            "images_per_s": steps * self.cfg.train.batch_size / wall if wall > 0 else 0.0,
            "precision": self.precision.name,
            "last_metrics": record,
        }

    def _log_if_due(self) -> dict[str, float] | None:
        if self.step_count % self.cfg.train.log_every:
            return None
        first, since = self._window
        now = time.perf_counter()
        self._window = (self.step_count, now)
        record: dict[str, Any] = {"step": self.step_count, **self.metrics.summary()}
        record["lr"] = self.optimizer.param_groups[0]["lr"]
        steps = self.step_count - first
        record["images_per_s"] = steps * self.cfg.train.batch_size / max(now - since, 1e-9)
        if hasattr(self.timestep_sampler, "warmed_up"):  # importance sampling: p_t over training
            record["p_t"] = bucketed(self.timestep_sampler.probabilities())
        self._write(record)
        return record

    def _write(self, record: dict[str, Any]) -> None:
        """metrics.jsonl (always) and every logger, on rank 0."""
        if distributed.is_main():
            if self.run_dir is not None:
                JsonlSink(self.run_dir.metrics_path).write(record)
            for logger in self.loggers:
                logger.write(record)

    def _evaluate_if_due(self) -> None:
        """The evaluator's record of this step (every rank takes part); a new best held-out
        bound with keep_best writes checkpoints/best.pt."""
        if self.evaluator is None or not self.evaluator.due(self.step_count):
            return
        record = {"step": self.step_count, **self.evaluator.evaluate(self)}
        self._write(record)
        if record.get("eval_best") and self.cfg.train.keep_best:
            self.save_checkpoint(name=checkpoint.BEST)

    def _after_step_events(self) -> None:
        every = self.cfg.train.sample_every
        if every and self.step_count % every == 0:
            for hook in self.hooks:
                hook(self)

    def save_checkpoint(self, name: str | None = None) -> Path | None:
        """Rank 0 writes the checkpoint of the current step (or, with `name`, a checkpoint
        of that name beside the numbered ones); every rank waits for it."""
        path = None
        if self.run_dir is not None and distributed.is_main():
            keep = self.cfg.train.keep_checkpoints
            with self._stop.saving():  # SIGINT/SIGTERM now wait for the save to finish
                path = checkpoint.save_checkpoint(
                    self.run_dir, self.state_dict(), self.cfg, self.step_count, keep, name=name
                )
                if not self._config_saved:  # after it, so a failed save changes nothing
                    self.run_dir.create(self.cfg)
                    self._config_saved = True
        distributed.barrier()
        return path

    def request_stop(self) -> None:
        """Finish the current step, checkpoint and return from run() (what SIGINT does)."""
        self._stop.request()

    # ---- state ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during training (tensors and plain values only)."""
        data = self.batches.state_dict() if hasattr(self.batches, "state_dict") else {}
        return {
            "model": self.module.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "grad_scaler": self.precision.state_dict(),
            "precision": self.precision.name,
            "sampler": self.timestep_sampler.state_dict(),
            "data": data,
            "rng": {"torch_cpu": torch.get_rng_state()},
            "evaluation": self.evaluator.state_dict() if self.evaluator is not None else {},
            "step": self.step_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.precision.load_state_dict(state.get("grad_scaler", {}))
        self.timestep_sampler.load_state_dict(state["sampler"])
        if state.get("data") and hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(state["data"])
        torch.set_rng_state(state["rng"]["torch_cpu"])
        if self.evaluator is not None and state.get("evaluation"):
            self.evaluator.load_state_dict(state["evaluation"])
        self.step_count = int(state["step"])

    def inference_state_dict(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """The model's state_dict with the slowest EMA's weights (what sampling uses; the
        same choice as checkpoint.load_for_inference), or the raw weights."""
        state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        if use_ema:
            for name, avg in self.ema.averaged(max(self.ema.rates)).items():
                state[name] = avg.to(state[name].dtype)
        return state

    def resume(self, path_or_run_dir: str | Path) -> Path:
        """Continue from a checkpoint (file or run directory) trained with the same
        diffusion and model config; other settings (steps, lr, …) may change."""
        path = checkpoint.resolve_checkpoint(path_or_run_dir)
        state = checkpoint.load_checkpoint(path)
        diffs = model_config_differences(state["config"], self.cfg.to_dict())
        if diffs:
            raise ValueError(
                f"checkpoint {path} was trained with a different config ({'; '.join(diffs)}, "
                "checkpoint != now); resume with its settings or start a new run"
            )
        self.load_state_dict(state)
        return path


def _enable_grad_checkpoint(model: nn.Module, enabled: bool) -> None:
    """--grad-checkpoint: per-block activation checkpointing, which iddpm's UNet offers."""
    if enabled and not hasattr(model, "grad_checkpoint"):
        raise ValueError(f"--grad-checkpoint needs iddpm's UNet, not {type(model).__name__}")
    if enabled:
        model.grad_checkpoint = True
