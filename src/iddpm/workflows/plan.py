"""The sampling plan: one object per sampling request, built once, that every job which
samples takes (`sample`, `quality`, `sweep`, `demo`, the training grids).

Construction validates the whole request before any work (step spec, sampler and its
options, class label) and builds the respaced process once. `prepare()` then does the
expensive part once: the statistics the sampler needs (registry entry's `statistics`,
from the run cache or estimated on `ctx.stats` images with the eager model) and the
model function. The model function is composed in this one place, innermost first:

    network (EMA or raw weights, as loaded) → torch.compile (ctx.compile)
      → respacing adapter (process index → the network's timestep)
      → transforms, in order (each ModelFn -> ModelFn, e.g. guidance)

Sample i depends only on (seed, i): `draw(indices)` draws any global indices on this
process (sharded evaluation gives each job its own), `draw_all()` draws the request's
`num` samples with one contiguous block per rank, gathered in order.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from iddpm import distributed
from iddpm.build import LoadedModel, inference_model, spaced
from iddpm.config import SampleConfig
from iddpm.diffusion import registry
from iddpm.diffusion.respace import ModelAdapter
from iddpm.generate import Samples, class_labels, draw_indices, gather
from iddpm.workflows.context import JobContext
from iddpm.workflows.runs import run_of
from iddpm.workflows.statistics import statistics_for

ModelFn = Callable[..., torch.Tensor]
Transform = Callable[[ModelFn], ModelFn]


def compiled_network(loaded: LoadedModel, compile: bool) -> torch.nn.Module:
    """The network of `loaded`, torch.compile'd when `compile`; call it once the job's
    inputs are checked (torch.compile makes its cache folder as soon as it is called).
    The inductor cache lives in the run (RUN/cache/inductor), so a later job on the same
    model starts warm; a run this process cannot write to keeps inductor's default cache.
    Compiling pays for long jobs only: about a minute cold on a CPU, seconds warm (see
    benchmarks/bench_inference.py)."""
    if not compile:
        return loaded.model
    run = run_of(loaded.checkpoint)
    cache = run.cache("inductor") if os.access(run.root, os.W_OK) else None
    return inference_model(loaded.model, True, cache)


def compiled(loaded: LoadedModel, compile: bool) -> LoadedModel:
    """`loaded` with its network from `compiled_network`."""
    if not compile:
        return loaded
    return dataclasses.replace(loaded, model=compiled_network(loaded, True))


class SamplingPlan:
    """One sampling request of `loaded` (see the module docstring).

    request: what to draw (SampleConfig: num, steps, sampler, options, seed, …);
    ctx: how (device, progress, statistics' images, compile, cache);
    transforms: model-function transforms applied after the respacing adapter."""

    def __init__(
        self,
        loaded: LoadedModel,
        request: SampleConfig,
        ctx: JobContext | None = None,
        transforms: Sequence[Transform] = (),
    ) -> None:
        self.loaded, self.request = loaded, request
        self.ctx = ctx or JobContext()
        self.transforms = tuple(transforms)
        dcfg, mcfg = loaded.config.diffusion, loaded.config.model
        self.entry = registry.get(request.sampler)
        self._base_options = registry.make_options(request.sampler, request.sampler_options)
        # the process is built once; building it checks the step spec
        self.diffusion, self.adapter = spaced(loaded.model, dcfg, request.steps)
        steps = self.adapter.original_steps(torch.arange(self.diffusion.num_timesteps))
        self.kept = tuple(int(s) for s in steps)
        class_labels(range(0), mcfg.num_classes, request.class_label)  # checks --class
        self.image_shape = (mcfg.in_channels, mcfg.image_size, mcfg.image_size)
        self._options: Any = None if self.entry.statistics else self._base_options
        self._model_fn: ModelFn | None = None

    # ---- what the request is
    @property
    def num_steps(self) -> int:
        """K: the steps of the respaced process."""
        return len(self.kept)

    @property
    def calls(self) -> int:
        """Network calls per sample (the sampler's NFE at K steps)."""
        return self.entry.calls(self.num_steps)

    @property
    def spec(self) -> str:
        """The step spec as written ("" becomes the model's T)."""
        return self.request.steps or str(self.loaded.config.diffusion.num_timesteps)

    @property
    def label(self) -> str:
        return self.entry.label

    def tag(self) -> str:
        """A file-name tag: sampler, its options, the step spec."""
        opts = "".join(
            f"-{k}{v:g}" if isinstance(v, float) else f"-{k}{v}"
            for k, v in sorted(self.request.sampler_options.items())
        )
        spec = self.spec.replace(",", "-").replace(":", "")
        return f"{self.request.sampler}{opts}_{spec}"

    # ---- the work
    def prepare(self) -> SamplingPlan:
        """Estimate (or read) the sampler's statistics, then compose the model function
        (compiling after the statistics: they run eagerly, at another batch shape).
        Idempotent; `options`, `model_fn` and the draws call it."""
        if self._options is None:
            values = statistics_for(
                self.loaded, self.entry.statistics, self.diffusion, self.adapter, self.ctx
            )
            self._options = registry.with_statistics(
                self.request.sampler, self._base_options, values
            )
        if self._model_fn is None:
            net = compiled_network(self.loaded, self.ctx.compile)
            fn: ModelFn = ModelAdapter(net, self.adapter.timestep_map, self.adapter.scale)
            for transform in self.transforms:
                fn = transform(fn)
            self._model_fn = fn
        return self

    @property
    def options(self) -> Any:
        """The sampler's options object, statistics included."""
        return self.prepare()._options

    @property
    def model_fn(self) -> ModelFn:
        """The composed model function (module docstring)."""
        self.prepare()
        assert self._model_fn is not None
        return self._model_fn

    def labels(self, indices: Sequence[int]):
        """The class of each sample index (None for an unconditional model)."""
        mcfg = self.loaded.config.model
        return class_labels(indices, mcfg.num_classes, self.request.class_label)

    def draw(
        self, indices: Sequence[int], progress: Callable[[int], None] | None = None
    ) -> Samples:
        """Samples of the global `indices` on this process: sample i depends only on
        (request.seed, i). `progress(n)` after each batch."""
        self.prepare()
        req = self.request
        return draw_indices(
            req.sampler,
            self.model_fn,
            self.diffusion,
            indices,
            seed=req.seed,
            image_shape=self.image_shape,
            options=self.options,
            labels=self.labels(indices),
            clip_denoised=req.clip_denoised,
            batch_size=req.batch_size,
            device=self.ctx.device,
            progress=progress,
        )

    def draw_all(self, desc: str | None = None) -> tuple[Samples, float]:
        """The request's `num` samples (each rank draws its block; all ranks get the
        gathered set) and the seconds the sampling took (statistics not counted)."""
        self.prepare()
        num = self.request.num
        mine = distributed.rank_block(num, distributed.rank(), distributed.world_size())
        desc = desc or f"sampling ({self.request.sampler}, {self.num_steps} steps)"
        start = time.perf_counter()
        with self.ctx.progress(desc, num, "img") as bar:
            samples = gather(self.draw(mine, bar.update))
        return samples, time.perf_counter() - start
