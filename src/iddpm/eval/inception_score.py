"""Inception Score (Salimans et al. 2016) from running sums, for any classifier's logits.

    IS = exp E_x KL(p(y|x) ‖ p(y)),  p(y) = E_x p(y|x),

computed, as published numbers are, on `splits` (10) disjoint parts of the sample set and
reported as the mean and standard deviation over the parts. Sample i belongs to part
⌊i·splits/N⌋ (contiguous, as the reference implementations cut an array). Per part and
bootstrap replicate r the state is Σ w p [K], Σ w Σ_c p_c log p_c and Σ w, since

    Σ_i w_i KL(p_i ‖ m) = Σ_i w_i Σ_c p_ic log p_ic − Σ_c (Σ_i w_i p_ic) log m_c,
    m = Σ_i w_i p_i / Σ_i w_i,

so it streams in O(R·splits·K) memory. With the Inception network of the TF evaluator this
is the Inception Score of papers; with the digits classifier it is a "digits IS" between 1
and 10, comparable only with itself.
"""

from __future__ import annotations

import numpy as np
import scipy.special

SPLITS = 10


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax of logits [N, K] in float64."""
    return scipy.special.softmax(np.asarray(logits, dtype=np.float64), axis=1)


class ScoreSums:
    """Running sums of the Inception Score per part and replicate (module docstring)."""

    def __init__(self, num_classes: int, total: int, splits: int = SPLITS, replicates: int = 1):
        if not 1 <= splits <= max(total, 1):
            raise ValueError(f"splits must be in 1..{total} (the number of samples), got {splits}")
        self.total, self.splits = total, splits
        self.prob = np.zeros((replicates, splits, num_classes))
        self.plogp = np.zeros((replicates, splits))
        self.weight = np.zeros((replicates, splits))

    def add(self, probs: np.ndarray, start: int, weights: np.ndarray) -> None:
        """probs [n, K] of samples start..start+n−1; weights [n, R]."""
        p = np.asarray(probs, dtype=np.float64)
        part = (np.arange(start, start + len(p)) * self.splits) // self.total
        ent = scipy.special.xlogy(p, p).sum(axis=1)  # Σ_c p log p, with 0 log 0 = 0
        for s in np.unique(part):
            sel = part == s
            w = weights[sel]  # [n_s, R]
            self.prob[:, s] += w.T @ p[sel]
            self.plogp[:, s] += w.T @ ent[sel]
            self.weight[:, s] += w.sum(axis=0)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"prob": self.prob, "plogp": self.plogp, "weight": self.weight}

    def scores(self) -> np.ndarray:
        """IS of every replicate and part: [R, splits]."""
        with np.errstate(divide="ignore", invalid="ignore"):
            m = self.prob / self.weight[..., None]
            cross = scipy.special.xlogy(self.prob, m).sum(axis=-1)
            return np.exp((self.plogp - cross) / self.weight)

    def whole_set(self) -> float:
        """IS of the whole set as one part (replicate 0): the digits' classifier score."""
        prob, w = self.prob[0].sum(axis=0), self.weight[0].sum()
        return float(np.exp((self.plogp[0].sum() - scipy.special.xlogy(prob, prob / w).sum()) / w))


def inception_score(logits: np.ndarray, splits: int = SPLITS) -> tuple[float, float]:
    """(mean, std) over `splits` parts of the IS of logits [N, K] (no bootstrap)."""
    p = probabilities(logits)
    sums = ScoreSums(p.shape[1], len(p), splits)
    sums.add(p, 0, np.ones((len(p), 1)))
    per_part = sums.scores()[0]
    return float(per_part.mean()), float(per_part.std())
