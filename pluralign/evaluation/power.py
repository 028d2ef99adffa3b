"""Power of the heterogeneity diagnostic: how much data separates two populations' CV²?

[VARIANCE-CLAIM] compares the spread of preference strength between populations.
:func:`separation_power` answers "given ``n`` pairs (and how many annotators share a β), how often
does a Gamma fit on the true margins tell populations with CV² ``a`` and ``b`` apart at level 95%?"
by simulation:

1. per population, annotators draw ``β ~ Gamma(k = 1/CV², rate = k/mean)`` (a point mass when
   CV² = 0), each labels ``pairs_per_annotator`` pairs whose true reward margin is
   ``Δ ~ N(0, margin_scale²)`` (on a fine grid of ``grid`` values, so each fit costs the same at
   any ``n``: the likelihood depends only on the distinct margins and their counts), with labels
   from Bradley–Terry ``P(chosen) = σ(βΔ)`` ([MixDPO, Eq. 3]);
2. :func:`~pluralign.evaluation.strength_fit.fit_strength` fits a Gamma on each population;
3. the two fitted CV² are compared with a Wald test, ``z = (ĉ_a − ĉ_b)/√(se_a² + se_b²)``, whose
   standard errors come from the sandwich ``H⁻¹ B H⁻¹`` of the likelihood in (log k, log λ)
   (``H`` the observed information, ``B`` the sum over annotators of their score outer products,
   which is right when an annotator's pairs share one β) and the delta method for CV² = 1/k.

"Separated" means ``|z| > z_{0.975}``. At ``a = b`` the rate is the test's size (≈ 5%).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.strength_fit import fit_strength
from pluralign.numerics import log_gamma_expected_sigmoid


@dataclass
class PowerResult:
    """Outcome of :func:`separation_power` (``power`` = share of simulations separated)."""

    n_pairs: int
    pairs_per_annotator: int
    cv2_a: float
    cv2_b: float
    power: float
    power_ci: tuple[float, float]
    n_sims: int
    mean_cv2_a: float
    mean_cv2_b: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _simulate(n_pairs: int, pairs_per_annotator: int, cv2: float, mean: float,
              grid: np.ndarray, probs: np.ndarray, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """Oriented margins (chosen − rejected) and annotator ids of one simulated population."""
    n_annotators = -(-n_pairs // pairs_per_annotator)
    if cv2 > 0:
        shape = 1.0 / cv2
        beta = rng.gamma(shape, mean / shape, size=n_annotators)
    else:
        beta = np.full(n_annotators, mean)
    annotator = np.arange(n_pairs) // pairs_per_annotator
    delta = grid[rng.choice(grid.size, size=n_pairs, p=probs)]
    wins = rng.random(n_pairs) < 1.0 / (1.0 + np.exp(-beta[annotator] * delta))
    return np.where(wins, delta, -delta), annotator


def _cv2_standard_error(margins: np.ndarray, clusters: np.ndarray, shape: float,
                        rate: float) -> float:
    """Sandwich standard error of CV² = 1/k for a Gamma fit (see the module docstring)."""
    values, inverse = np.unique(margins, return_inverse=True)
    m = torch.as_tensor(values, dtype=torch.float64)
    counts = torch.as_tensor(np.bincount(inverse, minlength=values.size), dtype=torch.float64)

    def scores(theta: np.ndarray) -> np.ndarray:
        a = torch.full_like(m, theta[0]).requires_grad_(True)
        b = torch.full_like(m, theta[1]).requires_grad_(True)
        log_gamma_expected_sigmoid(m, a.exp(), b.exp()).sum().backward()
        return np.stack([a.grad.numpy(), b.grad.numpy()], axis=1)  # per distinct margin

    theta = np.array([np.log(shape), np.log(rate)])
    step = 1e-4
    hessian = np.empty((2, 2))
    for j in range(2):
        e = np.zeros(2)
        e[j] = step
        hessian[:, j] = (counts.numpy() @ (scores(theta + e) - scores(theta - e))) / (2 * step)
    per_pair = scores(theta)[inverse]
    per_cluster = np.zeros((int(clusters.max()) + 1, 2))
    np.add.at(per_cluster, clusters, per_pair)
    inv = np.linalg.pinv(-hessian)
    cov = inv @ (per_cluster.T @ per_cluster) @ inv
    return float(np.sqrt(max(cov[0, 0], 0.0)) / shape)  # d(1/k)/d log k = −1/k


def separation_power(
    n_pairs: int,
    cv2_a: float,
    cv2_b: float,
    *,
    pairs_per_annotator: int = 1,
    mean: float = 1.0,
    margin_scale: float = 2.0,
    n_sims: int = 100,
    level: float = 0.95,
    grid: int = 201,
    seed: int = 0,
) -> PowerResult:
    """Share of simulations in which the diagnostic separates CV² ``cv2_a`` from ``cv2_b``.

    Args:
        n_pairs: comparisons per population.
        cv2_a, cv2_b: the two populations' true CV² = Var β / (E β)² (0 = one β for all).
        pairs_per_annotator: comparisons per annotator (all sharing that annotator's β).
        mean: E β of both populations (the result does not depend on it: only β·Δ matters).
        margin_scale: standard deviation of the true margins Δ.
        n_sims: simulated pairs of populations.
        level: confidence level of the two-sided Wald test.
        grid: number of distinct margin values (on ±4 standard deviations).
        seed: seed of every simulation.
    """
    if n_pairs < 10 or pairs_per_annotator < 1 or n_sims < 1:
        raise EvaluationError("separation_power needs n_pairs >= 10, pairs_per_annotator >= 1 "
                              "and n_sims >= 1")
    if min(cv2_a, cv2_b) < 0 or not mean > 0 or not margin_scale > 0:
        raise EvaluationError("separation_power needs CV² >= 0, mean > 0 and margin_scale > 0")
    rng = np.random.default_rng(seed)
    values = np.linspace(-4 * margin_scale, 4 * margin_scale, grid)
    probs = np.exp(-0.5 * (values / margin_scale) ** 2)
    probs /= probs.sum()
    crit = stats.norm.ppf(0.5 + level / 2)
    hits, fitted = 0, {"a": [], "b": []}
    for _ in range(n_sims):
        est = {}
        for name, cv2 in (("a", cv2_a), ("b", cv2_b)):
            margins, clusters = _simulate(n_pairs, pairs_per_annotator, cv2, mean, values, probs,
                                          rng)
            fit = fit_strength(margins, "gamma", n_boot=0)
            shape, rate_std = fit.params["shape"], fit.params["rate"] / fit.scale
            se = _cv2_standard_error(margins / fit.scale, clusters, shape, rate_std)
            est[name] = (fit.cv2, se)
            fitted[name].append(fit.cv2)
        z = (est["a"][0] - est["b"][0]) / max(np.hypot(est["a"][1], est["b"][1]), 1e-300)
        hits += abs(z) > crit
    low, high = stats.beta.ppf([0.025, 0.975], [hits, hits + 1], [n_sims - hits + 1, n_sims - hits])
    return PowerResult(n_pairs=n_pairs, pairs_per_annotator=pairs_per_annotator, cv2_a=cv2_a,
                       cv2_b=cv2_b, power=float(hits / n_sims),
                       power_ci=(float(np.nan_to_num(low, nan=0.0)),
                                 float(np.nan_to_num(high, nan=1.0))),
                       n_sims=n_sims, mean_cv2_a=float(np.mean(fitted["a"])),
                       mean_cv2_b=float(np.mean(fitted["b"])))


def pairs_needed(gap: float, *, base_cv2: float = 0.5, target: float = 0.8,
                 start: int = 500, limit: int = 1_024_000, **options: Any) -> int | None:
    """Smallest ``n`` in ``start·2^j`` (up to ``limit``) whose power to separate CV²
    ``base_cv2 + gap`` from ``base_cv2`` reaches ``target``; ``None`` if none does."""
    n = start
    while n <= limit:
        if separation_power(n, base_cv2 + gap, base_cv2, **options).power >= target:
            return n
        n *= 2
    return None
