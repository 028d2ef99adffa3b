"""Power of the heterogeneity diagnostic: how much data separates two populations' CV²?

[VARIANCE-CLAIM] compares the spread of preference strength between populations.
:func:`separation_power` answers "given ``n`` pairs, ``pairs_per_annotator`` of them per annotator
(sharing one β), how often does a Gamma fit on the true margins tell populations with CV² ``a`` and
``b`` apart at level 95%?" by simulation:

1. per population, annotators draw ``β ~ Gamma(k = 1/CV², rate = k/mean)`` (a point mass when
   CV² = 0), each labels ``pairs_per_annotator`` pairs whose true reward margin is
   ``Δ ~ N(0, margin_scale²)`` (on a grid of ``grid`` values), with labels from Bradley–Terry
   ``P(chosen) = σ(βΔ)`` ([MixDPO, Eq. 3]);
2. :func:`~pluralign.evaluation.strength_fit.fit_strength` fits a Gamma on each population with
   the per-pair likelihood or, ``likelihood="panel"``, the panel likelihood (one β per annotator);
3. the fitted CV² are compared with
   :func:`~pluralign.evaluation.strength_fit.cv2_difference_test` — the sandwich Wald test
   ``compare_heterogeneity`` reports to users (standard errors summed over annotators).

"Separated" means ``p < 1 − level``. At ``a = b`` the rate is the test's size (≈ 5%).
``E[β]·margin_scale`` sets how informative each label is (power grows with it): use
:func:`power_at_fit` for the scale and design of your own data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.strength_fit import (
    LIKELIHOODS,
    StrengthFit,
    cv2_difference_test,
    fit_strength,
    group_codes,
)


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
    likelihood: str = "per-pair"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def panel_wins(margin: np.ndarray, beta: np.ndarray, group: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """Simulated labels of the panel model: pair ``j`` of annotator ``group[j]`` prefers its first
    response with probability σ(β_a Δ_j), one β per annotator (Train 2009 §6.7), one uniform
    draw per pair; True where the first response wins."""
    return rng.random(margin.size) < 1.0 / (1.0 + np.exp(-beta[group] * margin))


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
    return np.where(panel_wins(delta, beta, annotator, rng), delta, -delta), annotator


def separation_power(
    n_pairs: int,
    cv2_a: float,
    cv2_b: float,
    *,
    pairs_per_annotator: int = 1,
    likelihood: str = "per-pair",
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
        likelihood: ``"per-pair"`` (eq. 3) or ``"panel"`` (one β per annotator) fits.
        mean: E β of both populations (the result does not depend on it: only β·Δ matters).
        margin_scale: standard deviation of the true margins Δ.
        n_sims: simulated pairs of populations.
        level: 1 − the Wald test's significance level.
        grid: number of distinct margin values (on ±4 standard deviations).
        seed: seed of every simulation.
    """
    if n_pairs < 10 or pairs_per_annotator < 1 or n_sims < 1:
        raise EvaluationError("separation_power needs n_pairs >= 10, pairs_per_annotator >= 1 "
                              "and n_sims >= 1")
    if likelihood not in LIKELIHOODS:
        raise EvaluationError(f"separation_power: likelihood must be one of {LIKELIHOODS}, "
                              f"got {likelihood!r}")
    if min(cv2_a, cv2_b) < 0 or not mean > 0 or not margin_scale > 0:
        raise EvaluationError("separation_power needs CV² >= 0, mean > 0 and margin_scale > 0")
    rng = np.random.default_rng(seed)
    values = np.linspace(-4 * margin_scale, 4 * margin_scale, grid)
    probs = np.exp(-0.5 * (values / margin_scale) ** 2)
    probs /= probs.sum()
    hits, fitted = 0, {"a": [], "b": []}
    for _ in range(n_sims):
        fits: dict[str, StrengthFit] = {}
        for name, cv2 in (("a", cv2_a), ("b", cv2_b)):
            margins, annotators = _simulate(n_pairs, pairs_per_annotator, cv2, mean, values,
                                            probs, rng)
            fits[name] = fit_strength(margins, "gamma", n_boot=0, clusters=annotators,
                                      groups=annotators if likelihood == "panel" else None)
            fitted[name].append(fits[name].cv2)
        p = cv2_difference_test(fits["a"], fits["b"])["pvalue"]
        hits += bool(p < 1 - level)  # (nan: a fit on a bound, not separated)
    low, high = stats.beta.ppf([0.025, 0.975], [hits, hits + 1], [n_sims - hits + 1, n_sims - hits])
    return PowerResult(n_pairs=n_pairs, pairs_per_annotator=pairs_per_annotator, cv2_a=cv2_a,
                       cv2_b=cv2_b, power=float(hits / n_sims),
                       power_ci=(float(np.nan_to_num(low, nan=0.0)),
                                 float(np.nan_to_num(high, nan=1.0))),
                       n_sims=n_sims, mean_cv2_a=float(np.mean(fitted["a"])),
                       mean_cv2_b=float(np.mean(fitted["b"])), likelihood=likelihood)


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


@dataclass
class FitPower:
    """Outcome of :func:`power_at_fit`."""

    power: float
    power_ci: tuple[float, float]
    n_sims: int
    cv2: float
    likelihood: str
    n_pairs: int
    n_annotators: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def power_at_fit(margins: Sequence[float] | np.ndarray, fit: StrengthFit, *,
                 groups: Sequence[Any] | None = None, n_sims: int = 20, alpha: float = 0.05,
                 seed: int = 0) -> FitPower:
    """Power of the fit's own point-mass test (the likelihood ratio against ½χ²₀ + ½χ²₁ that the
    verdict requires) at the user's fitted scale, spread and design.

    Each simulation keeps the data's |Δ| and annotators (``groups``; the fit's likelihood), draws
    β from the fitted distribution (one per annotator for a panel fit, one per pair otherwise),
    redraws every label from ``σ(βΔ)`` and refits without bootstrap; the power is the share of
    simulations with ``p < alpha``. It answers "if the population were as the fit says, how
    often would data like mine show it?".
    """
    m = np.abs(np.asarray(margins, dtype=float))
    panel = fit.likelihood == "panel"
    if panel and groups is None:
        raise EvaluationError("power_at_fit: a panel fit needs the same groups (annotator ids)")
    rng = np.random.default_rng(seed)
    dist = fit.distribution()
    if panel:
        codes, _ = group_codes(groups, m.size)
    else:
        codes = np.arange(m.size)
    hits = 0
    for _ in range(n_sims):
        beta = dist.sample(int(codes.max()) + 1,
                           generator=torch.Generator().manual_seed(int(rng.integers(2**62)))).numpy()
        sim = np.where(panel_wins(m, beta, codes, rng), m, -m)
        try:
            refit = fit_strength(sim, fit.family, n_boot=0, groups=codes if panel else None)
        except EvaluationError:  # one-signed labels: nothing to detect
            continue
        hits += refit.heterogeneity_pvalue < alpha
    low, high = stats.beta.ppf([0.025, 0.975], [hits, hits + 1], [n_sims - hits + 1, n_sims - hits])
    return FitPower(power=hits / n_sims, power_ci=(float(np.nan_to_num(low, nan=0.0)),
                                                   float(np.nan_to_num(high, nan=1.0))),
                    n_sims=n_sims, cv2=fit.cv2, likelihood=fit.likelihood, n_pairs=int(m.size),
                    n_annotators=fit.n_annotators)

