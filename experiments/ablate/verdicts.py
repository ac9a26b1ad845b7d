"""A verdict for each claim of docs/paper.md's last section, from the measurements.

Every claim is judged on differences arranged so that the paper predicts > 0, each with
its uncertainty u (`stats.compare`): *reproduced* when every judged part is ≥ 2u in the
paper's direction, *not reproduced* when some part is ≥ 2u against it, else
*inconclusive*. Claims c3–c5 are judged on the cosine arms (the paper's setting); the
linear arms are shown as context.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from experiments.ablate.plan import Arm, Recipe
from experiments.ablate.stats import (
    CURVE_KEYS,
    NOT_MEASURED,
    Comparison,
    Measurement,
    compare,
    judge,
    mean_metric,
)

CLAIMS = {
    "c1": "T = 4000 beats T = 1000 on NLL",
    "c2": "the cosine schedule beats the linear one",
    "c3": "L_hybrid beats L_simple on NLL at similar sample quality",
    "c4": "L_vlb with importance sampling gives the best NLL and a smoother loss curve than "
    "uniform L_vlb",
    "c5": "learned-variance models keep their sample quality with 50–100 strided steps while "
    "fixed-variance L_simple models degrade",
}
REASONS = {
    "not run": "the arms it needs were not run",
    "inconclusive": "no part differs by ≥ 2u against the paper, not every part by ≥ 2u for it",
    "reproduced": "every part differs by ≥ 2u in the paper's direction",
    "not reproduced": "a part differs by ≥ 2u against the paper's direction (see the per-part "
    "verdicts)",
}

HYBRID = Recipe("hybrid", "learned-range")
VLB_IMPORTANCE = Recipe("vlb-importance", "learned-range")
VLB_UNIFORM = Recipe("vlb-uniform", "learned-range")
SIMPLE_BETA = Recipe("simple", "fixed-large")  # σ² = β
SIMPLE_BETA_TILDE = Recipe("simple", "fixed-small")  # σ² = β̃
SIMPLE = (SIMPLE_BETA, SIMPLE_BETA_TILDE)

Comparisons = dict[str, Comparison]
ArmAt = Callable[[Recipe], Arm]  # a recipe at one schedule and T


@dataclass
class Verdict:
    """One claim's verdict, the comparisons behind it (named) and a one-line reason.
    difference: what the comparisons subtract; evidence: one formatted line each."""

    claim: str
    verdict: str
    reason: str
    difference: str
    evidence: list[str]
    comparisons: Comparisons

    def to_json(self) -> dict:
        """As written to results.json (comparisons as {diff, u, z, n})."""
        return asdict(self)


def verdicts(measurements: list[Measurement]) -> dict[str, Verdict]:
    """c1–c5, keyed as in `CLAIMS`. T is the shortest chain measured, the long T the
    longest."""
    chain_lengths = sorted({m.arm.timesteps for m in measurements}) or [0]
    short, long = chain_lengths[0], chain_lengths[-1]
    out = {
        "c1": _longer_chain_helps(measurements, short, long),
        "c2": _cosine_beats_linear(measurements, short),
    }
    judged_on_cosine = {
        "c3": _hybrid_beats_simple,
        "c4": _importance_sampling_helps_vlb,
        "c5": _learned_variance_keeps_few_step_quality,
    }
    for key, claim in judged_on_cosine.items():
        verdict, comparisons, difference = claim(measurements, lambda r: r.at("cosine", short))
        _, context, _ = claim(measurements, lambda r: r.at("linear", short))
        comparisons.update({f"context, linear: {k}": c for k, c in context.items()})
        out[key] = _verdict(key, verdict, comparisons, difference, "")
    return out


def _longer_chain_helps(measurements: list[Measurement], short: int, long: int) -> Verdict:
    """c1: bpd(T) − bpd(long T), cosine, for the objectives trained at both; judged on
    L_hybrid (or the first one measured)."""
    comparisons: Comparisons = {}
    if long != short:
        for recipe in (HYBRID, VLB_IMPORTANCE, SIMPLE_BETA, VLB_UNIFORM):
            a, b = recipe.at("cosine", short), recipe.at("cosine", long)
            comparison = compare(measurements, a, b, "bpd")
            if comparison.n:
                comparisons[recipe.objective] = comparison
    primary = comparisons.get("hybrid") or next(iter(comparisons.values()), NOT_MEASURED)
    what = f"bpd(T={short}) − bpd(T={long}), cosine"
    return _verdict("c1", judge(primary), comparisons, what, " bits/dim")


def _cosine_beats_linear(measurements: list[Measurement], short: int) -> Verdict:
    """c2: linear − cosine bpd for every objective at T; judged on L_hybrid."""
    comparisons = {
        f"{recipe.objective}/{recipe.var_type}": compare(
            measurements, recipe.at("linear", short), recipe.at("cosine", short), "bpd"
        )
        for recipe in (HYBRID, SIMPLE_BETA, SIMPLE_BETA_TILDE, VLB_UNIFORM, VLB_IMPORTANCE)
    }
    comparisons["FID full, L_hybrid"] = compare(
        measurements, HYBRID.at("linear", short), HYBRID.at("cosine", short), f"fid_{short}"
    )
    verdict = judge(comparisons["hybrid/learned-range"])
    return _verdict("c2", verdict, comparisons, "linear − cosine", "")


def _hybrid_beats_simple(measurements: list[Measurement], arm_at: ArmAt):
    """c3: bpd of L_simple (its better σ²) minus L_hybrid; full-chain FID likewise, which
    only has to be similar (z > −2)."""
    hybrid = arm_at(HYBRID)
    full_fid = f"fid_{hybrid.timesteps}"
    best_nll = min(SIMPLE, key=lambda r: mean_metric(measurements, arm_at(r), "bpd"))
    best_fid = min(SIMPLE, key=lambda r: mean_metric(measurements, arm_at(r), full_fid))
    nll = compare(measurements, arm_at(best_nll), hybrid, "bpd")
    fid = compare(measurements, arm_at(best_fid), hybrid, full_fid)
    fid_similar = "reproduced" if math.isfinite(fid.z) and fid.z > -2 else judge(fid)
    comparisons = {
        f"bpd {best_nll.var_type} − hybrid": nll,
        f"FID full {best_fid.var_type} − hybrid (similar if z > −2)": fid,
    }
    return _combine([judge(nll), fid_similar]), comparisons, "L_simple − L_hybrid"


def _importance_sampling_helps_vlb(measurements: list[Measurement], arm_at: ArmAt):
    """c4: the best other arm's bpd minus importance-sampled L_vlb's, and uniform minus
    importance-sampled std of log grad-norm increments. Shown, not judged: the logged-loss
    smoothness (the logged loss is unweighted under importance sampling) and uniform
    minus importance-sampled bpd."""
    importance, uniform = arm_at(VLB_IMPORTANCE), arm_at(VLB_UNIFORM)
    candidates = (HYBRID, SIMPLE_BETA, SIMPLE_BETA_TILDE, VLB_UNIFORM)
    others = [r for r in candidates if math.isfinite(mean_metric(measurements, arm_at(r), "bpd"))]
    comparisons: Comparisons = {}
    judged = []
    if others:
        rival = min(others, key=lambda r: mean_metric(measurements, arm_at(r), "bpd"))
        name = f"bpd {rival.objective}/{rival.var_type} − vlb-importance"
        comparisons[name] = compare(measurements, arm_at(rival), importance, "bpd")
        judged.append(comparisons[name])
    grad_noise, loss_noise = CURVE_KEYS[0], CURVE_KEYS[1]
    comparisons[f"{grad_noise} uniform − importance"] = compare(
        measurements, uniform, importance, grad_noise
    )
    judged.append(comparisons[f"{grad_noise} uniform − importance"])
    comparisons[f"{loss_noise} uniform − importance (not judged)"] = compare(
        measurements, uniform, importance, loss_noise
    )
    comparisons["bpd vlb-uniform − vlb-importance (not judged)"] = compare(
        measurements, uniform, importance, "bpd"
    )
    return _combine([judge(c) for c in judged]), comparisons, "rival − L_vlb(IS)"


def _learned_variance_keeps_few_step_quality(measurements: list[Measurement], arm_at: ArmAt):
    """c5: the FID lost from the full chain to K = 50, 100 steps, fixed variance (the σ²
    that loses less) minus L_hybrid's."""
    comparisons: Comparisons = {}
    for steps in (50, 100):
        drop = f"drop_{steps}"
        fixed = min(SIMPLE, key=lambda r: mean_metric(measurements, arm_at(r), drop))
        name = f"K={steps}: drop {fixed.var_type} − drop hybrid"
        comparisons[name] = compare(measurements, arm_at(fixed), arm_at(HYBRID), drop)
    parts = [judge(c) for c in comparisons.values()]
    return _combine(parts), comparisons, "FID(K) − FID(full)"


def _combine(parts: Sequence[str]) -> str:
    if any(part == "not reproduced" for part in parts):
        return "not reproduced"
    return "reproduced" if parts and all(p == "reproduced" for p in parts) else "inconclusive"


def _verdict(
    key: str, verdict: str, comparisons: Comparisons, difference: str, unit: str
) -> Verdict:
    if not any(c.n for c in comparisons.values()):
        verdict, reason = "inconclusive", REASONS["not run"]
    else:
        reason = REASONS[verdict]
    evidence = [_evidence(name, c, unit) for name, c in comparisons.items()]
    return Verdict(CLAIMS[key], verdict, reason, difference, evidence, comparisons)


def _evidence(name: str, comparison: Comparison, unit: str = "") -> str:
    if not comparison.n:
        return f"{name}: not measured"
    return (
        f"{name}: {comparison.diff:+.3f}{unit} ± {comparison.u:.3f} (z = {comparison.z:.1f}, "
        f"{comparison.n} seed(s) → {judge(comparison)})"
    )
