"""Guidance as model-function transforms (diffusion/guidance.py).

Classifier-free guidance: W = 1 and W = 0 are the conditional and null-label networks bit
for bit, and the batched guided call equals two separate calls. Classifier guidance, on
the two-class Gaussian mixture whose ε_y, ε_∅ and ∇log p(y | x_t) are closed-form
(conftest): the ε form at S = 1 with the exact classifier turns ε_∅ into ε_y, the mean form
moves the reverse mean by exactly S·Σ·g, and guided samples have the class-conditional
moments. Every registered sampler runs with guidance on (the contract of the registry).
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import gaussian_oracle, mixture_classifier, mixture_oracle, tiny_experiment
from iddpm.build import build_unet
from iddpm.diffusion import registry, schedules
from iddpm.diffusion.gaussian import GaussianDiffusion, MeanType, VarType
from iddpm.diffusion.guidance import (
    GradForm,
    classifier_free,
    classifier_gradient,
    classifier_guided,
    form_for,
    rows_per_call,
)
from iddpm.diffusion.respace import parse_steps, respace
from iddpm.diffusion.samplers import per_sample_generators

MUS, S = (-0.4, 0.4), 0.2


def process(steps: str, var_type=VarType.LEARNED_RANGE, mean_type=MeanType.EPSILON):
    base = GaussianDiffusion(schedules.get("cosine", 1000), mean_type, var_type)
    return respace(base, parse_steps(steps, 1000))[0]


@pytest.fixture(scope="module")
def null_class_unet() -> torch.nn.Module:
    cfg = tiny_experiment(num_classes=3)
    cfg = cfg.replace(train=cfg.train.replace(class_dropout=0.1))
    torch.manual_seed(0)
    net = build_unet(cfg.model).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:  # zero-initialised output layers: make every path count
                p.normal_(0.0, 0.05)
    return net


def _inputs(n: int = 6):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 8, 8, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g).float()
    y = torch.arange(n) % 3
    return x, t, y


def test_scale_1_is_the_conditional_and_scale_0_the_null_network_bit_for_bit(
    null_class_unet,
) -> None:
    net = null_class_unet
    x, t, y = _inputs()
    with torch.no_grad():
        assert torch.equal(classifier_free(net, 1.0, 3)(x, t, y=y), net(x, t, y=y))
        null = torch.full_like(y, 3)
        assert torch.equal(classifier_free(net, 0.0, 3)(x, t, y=y), net(x, t, y=null))


@pytest.mark.parametrize("variance_from", ["cond", "null"])
def test_batched_guided_call_equals_two_separate_calls(null_class_unet, variance_from) -> None:
    net, w = null_class_unet, 3.0
    x, t, y = _inputs()
    with torch.no_grad():
        out = classifier_free(net, w, 3, variance_from=variance_from)(x, t, y=y)
        c, u = net(x, t, y=y), net(x, t, y=torch.full_like(y, 3))
    want_mean = u[:, :1] + w * (c[:, :1] - u[:, :1])
    want_var = (c if variance_from == "cond" else u)[:, 1:]
    torch.testing.assert_close(out, torch.cat([want_mean, want_var], 1), rtol=1e-5, atol=1e-5)
    assert rows_per_call(w) == 2 and rows_per_call(1.0) == rows_per_call(0.0) == 1


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_a_negative_or_non_finite_scale_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="--guidance-scale must be a finite number >= 0"):
        classifier_free(lambda x, t, **c: x, bad, 0)
    d = process("10")
    with pytest.raises(ValueError, match="--classifier-scale must be a finite number >= 0"):
        classifier_guided(lambda x, t, **c: x, d, lambda x, t: x, bad, GradForm.EPS)


def test_guidance_without_labels_is_refused() -> None:
    with pytest.raises(ValueError, match="guidance needs the class labels"):
        classifier_free(lambda x, t, **c: x, 2.0, 0)(torch.zeros(1, 1, 2, 2), torch.zeros(1))


def test_classifier_gradient_is_the_analytic_one() -> None:
    # ∇ log p(y | x_t) = −(ε_y − ε_∅)/√(1 − ᾱ_t) for the mixture (both ε are exact).
    d = process("50", VarType.FIXED_SMALL)
    x = torch.randn(8, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t, y = torch.full((8,), 30), torch.tensor([0, 1] * 4)
    eps_fn = mixture_oracle(d, MUS, S)
    grad = classifier_gradient(mixture_classifier(d, MUS, S), x, t, y)
    want = -(eps_fn(x, t, y=y) - eps_fn(x, t)) / math.sqrt(1 - float(d.alphas_cumprod[30]))
    torch.testing.assert_close(grad, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("mean_type", [MeanType.EPSILON, MeanType.X0])
def test_eps_form_at_scale_1_turns_the_unconditional_model_into_the_conditional(mean_type):
    d = process("50", VarType.LEARNED_RANGE, mean_type)
    x = torch.randn(8, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t, y = torch.tensor([0, 5, 10, 20, 30, 40, 45, 49]), torch.tensor([0, 1] * 4)
    oracle = mixture_oracle(d, MUS, S)
    guided = classifier_guided(
        oracle, d, mixture_classifier(d, MUS, S), 1.0, GradForm.EPS, pass_label=False
    )
    # the mean channels become the conditional model's; the variance channels stay
    got, want = guided(x, t, y=y), oracle(x, t, y=y)
    torch.testing.assert_close(got[:, :1], want[:, :1], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(got[:, 1:], oracle(x, t)[:, 1:], rtol=0, atol=0)


@pytest.mark.parametrize("var_type", [VarType.LEARNED_RANGE, VarType.FIXED_SMALL])
@pytest.mark.parametrize("mean_type", [MeanType.EPSILON, MeanType.X0, MeanType.PREV_MEAN])
def test_mean_form_moves_the_reverse_mean_by_scale_sigma_gradient(var_type, mean_type) -> None:
    d = process("50", var_type, mean_type)
    x = torch.randn(8, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t, y = torch.tensor([1, 5, 10, 20, 30, 40, 45, 49]), torch.tensor([0, 1] * 4)
    oracle, clf = mixture_oracle(d, MUS, S), mixture_classifier(d, MUS, S)
    out = oracle(x, t)
    guided = classifier_guided(oracle, d, clf, 2.5, GradForm.MEAN, pass_label=False)(x, t, y=y)
    before = d.p_mean_variance(out, x, t, clip_denoised=False)
    after = d.p_mean_variance(guided, x, t, clip_denoised=False)
    shift = 2.5 * before.variance * classifier_gradient(clf, x, t, y)
    torch.testing.assert_close(after.mean - before.mean, shift, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(after.variance, before.variance, rtol=0, atol=0)


def test_forms_follow_the_sampler_kind() -> None:
    assert form_for(ode=True) is GradForm.EPS and form_for(ode=False) is GradForm.MEAN


def _conditional_moments_ok(x: torch.Tensor, mu: float, k: int) -> None:
    # n values of independent dimensions; the systematic allowance is the registry
    # contract's (a first-order solver's c/K of s², the last step's lost posterior variance).
    x = x.flatten()
    n = x.numel()
    tol_mean = 5 * math.sqrt(S**2 / n) + 0.01 * S
    tol_var = 5 * S**2 * math.sqrt(2 / (n - 1)) + 10 / k * S**2
    assert abs(float(x.mean()) - mu) < tol_mean, (float(x.mean()), mu, tol_mean)
    assert abs(float(x.var()) - S**2) < tol_var, (float(x.var()), S**2, tol_var)


def _guided_samples(name, d, form, label, n, seed=11, cfg_scale=None):
    model_fn = mixture_oracle(d, MUS, S)
    if cfg_scale is not None:
        model_fn = classifier_free(model_fn, cfg_scale, len(MUS))
    guided = classifier_guided(
        model_fn, d, mixture_classifier(d, MUS, S), 1.0, form, pass_label=cfg_scale is not None
    )
    entry = registry.get(name)
    options = registry.make_options(name)
    if entry.from_data is not None:  # statistics of the label-marginal data, as a run has
        g = torch.Generator().manual_seed(7)
        comp = torch.randint(0, 2, (1024, 1, 1, 1), generator=g).double()
        x0 = MUS[0] + (MUS[1] - MUS[0]) * comp + S * torch.randn(1024, 1, 2, 2, generator=g)
        options = entry.from_data(mixture_oracle(d, MUS, S), d, x0.float())
    return registry.sample(
        name,
        guided,
        d,
        options=options,
        shape=(n, 1, 2, 2),
        generator=torch.Generator().manual_seed(seed),
        clip_denoised=False,
        model_kwargs={"y": torch.full((n,), label)},
        dtype=torch.float64,
    )


@pytest.mark.parametrize("form", [GradForm.MEAN, GradForm.EPS])
def test_classifier_guidance_at_scale_1_samples_the_class_conditional_distribution(form):
    # x0 ~ ½N(−0.4, s²) + ½N(0.4, s²); guided to class 1 the samples are N(0.4, s²):
    # 1024 images of 4 dimensions, 100 ancestral steps.
    k = 100
    x = _guided_samples("ancestral", process(str(k)), form, 1, 1024)
    _conditional_moments_ok(x, MUS[1], k)


@pytest.mark.parametrize("name", registry.names())
def test_every_sampler_samples_the_class_with_classifier_guidance(name: str) -> None:
    # The registry's contract with guidance on: the exact classifier at S = 1 makes the
    # unconditional model the conditional one, for any sampler, in the form its kind gets
    # (the ε form, exact, for ODE samplers; the ancestral mean shift for the others).
    k = 100
    x = _guided_samples(name, process(str(k)), form_for(registry.get(name).ode), 0, 1024)
    _conditional_moments_ok(x, MUS[0], k)


@pytest.mark.parametrize("name", registry.names())
def test_every_sampler_keeps_per_sample_seeds_with_classifier_free_guidance(name: str) -> None:
    d = process("10")
    model_fn = classifier_free(mixture_oracle(d, MUS, S), 3.0, len(MUS))
    entry = registry.get(name)
    options = registry.make_options(name)
    if entry.from_data is not None:
        x0 = 0.4 * torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(7))
        options = entry.from_data(gaussian_oracle(d, 0.0, 0.4), d, x0)

    def run(indices: list[int]) -> torch.Tensor:
        return registry.sample(
            name,
            model_fn,
            d,
            options=options,
            shape=(len(indices), 1, 2, 2),
            generator=per_sample_generators(5, indices),
            clip_denoised=False,
            model_kwargs={"y": torch.tensor([i % 2 for i in indices])},
        )

    whole = run(list(range(6)))
    parts = torch.cat([run([i]) for i in range(6)])
    torch.testing.assert_close(parts, whole, rtol=0, atol=0)
    assert bool(torch.isfinite(whole).all())
