"""Win rates against a baseline, length-controlled win rates, their uncertainty ([MixDPO, Tab. 1]).

Per prompt ``i`` a judge returns ``o_i ∈ [0, 1]``, the preference for the policy's response over the
baseline's (1 = policy wins, 0 = baseline wins, 0.5 = tie; soft judges give probabilities).

* Win rate ``WR = 100 · (1/n) Σ_i o_i`` with a paired-bootstrap percentile interval over prompts.
* Length-controlled win rate as in AlpacaEval 2.0 (Dubois et al. 2024): a logistic GLM
  ``logit P(policy wins) = a + b · tanh(Δℓ_i / sd(Δℓ))`` with ``Δℓ_i`` the length difference
  (policy − baseline), fitted by maximum likelihood on the soft outcomes; the LC win rate is the
  prediction at zero length difference, ``100 · σ(a)``. (AlpacaEval adds an instruction-difficulty
  term estimated across many models; with one model pair it is not identified and is left out.)
* Sign-flip permutation test: under H0 "policy and baseline are exchangeable" each centred outcome
  ``d_i = o_i − ½`` is symmetric about 0, so the statistic ``|mean(d)|`` is compared with its
  distribution over random sign flips ``|mean(s_i d_i)|``, ``s_i = ±1`` (exact enumeration for small
  ``n``). The same test on paired differences compares two policies on the same prompts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pluralign.evaluation.bootstrap import bootstrap_statistic, percentile_interval
from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.judges import Judge, Judgments, judge_pairs

#: Ridge penalty of the LC logistic fit: keeps the fit finite when every prompt is won (or lost),
#: i.e. under complete separation; with hundreds of prompts its effect on the estimate is < 1e-4.
DEFAULT_LC_L2 = 1e-3

#: Sign-flip tests enumerate all 2^n flips up to this n, and draw random flips above it.
EXACT_SIGN_FLIP_MAX_N = 16


def _outcomes(values: np.ndarray | list[float], name: str = "outcomes") -> np.ndarray:
    o = np.asarray(values, dtype=float).ravel()
    if o.size == 0:
        raise EvaluationError(f"{name}: no judged prompts (all judge calls failed or none given)")
    if not np.all(np.isfinite(o)):
        raise EvaluationError(f"{name}: {int((~np.isfinite(o)).sum())} non-finite values; drop "
                              "failed judgements first (judge_pairs lists them in .failed)")
    if np.any((o < 0) | (o > 1)):
        raise EvaluationError(f"{name}: judge preferences must lie in [0, 1]")
    return o


def length_feature(length_diff: np.ndarray) -> np.ndarray:
    """AlpacaEval 2.0 length regressor ``tanh(Δℓ / sd(Δℓ))`` (zero if all differences are equal)."""
    d = np.asarray(length_diff, dtype=float)
    sd = d.std(ddof=1) if d.size > 1 else 0.0
    return np.tanh(d / sd) if sd > 0 else np.zeros_like(d)


def fit_length_logistic(outcomes: np.ndarray, feature: np.ndarray,
                        l2: float = DEFAULT_LC_L2, tol: float = 1e-12,
                        max_iter: int = 100) -> tuple[float, float]:
    """Maximise ``Σ o log σ(η) + (1−o) log σ(−η) − (l2/2)(a² + b²)``, ``η = a + b·x``, by Newton.

    Returns ``(a, b)``. The objective is strictly concave for ``l2 > 0``; steps are halved until the
    objective increases, so the iteration converges from ``(0, 0)``.
    """
    o, x = np.asarray(outcomes, float), np.asarray(feature, float)
    design = np.stack([np.ones_like(x), x], axis=1)
    theta = np.zeros(2)

    def objective(t: np.ndarray) -> float:
        eta = design @ t
        return float(np.sum(o * -np.logaddexp(0, -eta) + (1 - o) * -np.logaddexp(0, eta))
                     - 0.5 * l2 * t @ t)

    current = objective(theta)
    for _ in range(max_iter):
        p = 1 / (1 + np.exp(-(design @ theta)))
        grad = design.T @ (o - p) - l2 * theta
        hess = -(design.T * (p * (1 - p))) @ design - l2 * np.eye(2)
        if np.allclose(hess[1], 0) and np.allclose(hess[:, 1], 0):
            hess[1, 1] = -1.0  # constant feature: b stays 0
        step = -np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-8:
            candidate = theta + scale * step
            value = objective(candidate)
            if value >= current - 1e-15:
                break
            scale /= 2
        theta, gain, current = candidate, value - current, value
        if abs(gain) < tol and np.max(np.abs(scale * step)) < 1e-9:
            break
    return float(theta[0]), float(theta[1])


def length_controlled_win_rate(outcomes: np.ndarray, length_diff: np.ndarray,
                               l2: float = DEFAULT_LC_L2) -> float:
    """``100 · σ(a)`` of the AlpacaEval 2.0 length GLM (see module docstring)."""
    a, _ = fit_length_logistic(_outcomes(outcomes), length_feature(length_diff), l2=l2)
    return 100.0 / (1.0 + math.exp(-a))


def sign_flip_test(differences: np.ndarray, n_permutations: int = 10_000, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of ``|mean(d)|`` (H0: ``d`` symmetric about 0).

    Exact for ``n ≤ EXACT_SIGN_FLIP_MAX_N`` (all ``2^n`` flips); otherwise Monte Carlo with the
    ``(1 + #{T* ≥ T}) / (1 + M)`` correction, which keeps the p-value valid.
    """
    d = np.asarray(differences, dtype=float).ravel()
    if d.size == 0 or not np.all(np.isfinite(d)):
        raise EvaluationError("sign_flip_test needs at least one finite difference")
    observed = abs(d.mean())
    slack = 1e-12 * max(1.0, float(np.abs(d).max()))
    if d.size <= EXACT_SIGN_FLIP_MAX_N:
        signs = np.array(list(itertools.product((-1.0, 1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d) / d.size >= observed - slack))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_permutations, 1000):
        size = min(1000, n_permutations - start)
        signs = rng.choice((-1.0, 1.0), size=(size, d.size))
        hits += int(np.sum(np.abs(signs @ d) / d.size >= observed - slack))
    return (1 + hits) / (1 + n_permutations)


@dataclass(frozen=True)
class WinRateResult:
    """Win rate statistics of a policy against a baseline, in percent.

    ``p_value`` is the sign-flip test of WR = 50; ``length_coef`` is ``b`` of the LC fit (positive:
    the judge prefers longer responses). LC fields are ``None`` when no lengths were given.
    """

    n: int
    win_rate: float
    ci_low: float
    ci_high: float
    p_value: float
    lc_win_rate: float | None = None
    lc_ci_low: float | None = None
    lc_ci_high: float | None = None
    length_coef: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def win_rate_stats(
    outcomes: np.ndarray | list[float],
    length_diff: np.ndarray | list[float] | None = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    n_permutations: int = 10_000,
    l2: float = DEFAULT_LC_L2,
    seed: int = 0,
) -> WinRateResult:
    """Win rate, LC win rate, paired-bootstrap intervals over prompts and the sign-flip p-value."""
    o = _outcomes(outcomes)
    rng = np.random.default_rng(seed)
    wr = 100 * bootstrap_statistic(o.size, lambda idx: o[idx].mean(), n_boot, rng)
    result = {"n": int(o.size), "win_rate": 100 * float(o.mean()),
              "p_value": sign_flip_test(o - 0.5, n_permutations, seed)}
    result["ci_low"], result["ci_high"] = percentile_interval(wr, level)
    if length_diff is not None:
        dl = np.asarray(length_diff, dtype=float).ravel()
        if dl.shape != o.shape or not np.all(np.isfinite(dl)):
            raise EvaluationError(f"length_diff must be {o.size} finite numbers, one per outcome")
        x = length_feature(dl)
        a, b = fit_length_logistic(o, x, l2=l2)

        def lc(idx: np.ndarray) -> float:
            return 100 / (1 + math.exp(-fit_length_logistic(o[idx], x[idx], l2=l2)[0]))

        lo, hi = percentile_interval(bootstrap_statistic(o.size, lc, n_boot, rng), level)
        result.update(lc_win_rate=100 / (1 + math.exp(-a)), lc_ci_low=lo, lc_ci_high=hi,
                      length_coef=b)
    return WinRateResult(**result)


@dataclass(frozen=True)
class PairedDifference:
    """Difference of two policies' win rates on the same prompts (percentage points)."""

    n: int
    difference: float
    ci_low: float
    ci_high: float
    p_value: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def compare_win_rates(outcomes_a: np.ndarray | list[float], outcomes_b: np.ndarray | list[float],
                      *, n_boot: int = 1000, level: float = 0.95, n_permutations: int = 10_000,
                      seed: int = 0) -> PairedDifference:
    """``WR(a) − WR(b)`` on shared prompts: paired bootstrap interval and sign-flip p-value."""
    a, b = _outcomes(outcomes_a, "outcomes_a"), _outcomes(outcomes_b, "outcomes_b")
    if a.shape != b.shape:
        raise EvaluationError(f"paired comparison needs outcomes on the same prompts "
                              f"({a.size} vs {b.size} given)")
    d = a - b
    rng = np.random.default_rng(seed)
    samples = 100 * bootstrap_statistic(d.size, lambda idx: d[idx].mean(), n_boot, rng)
    lo, hi = percentile_interval(samples, level)
    return PairedDifference(n=int(d.size), difference=100 * float(d.mean()), ci_low=lo, ci_high=hi,
                            p_value=sign_flip_test(d, n_permutations, seed))


def _length(response: Any) -> int:
    """Characters of a response: a string or chat messages (their contents)."""
    if isinstance(response, str):
        return len(response)
    return sum(len(m.get("content", "")) for m in response)


@dataclass(frozen=True)
class JudgedWinRate:
    """:func:`judged_win_rate`'s result: the statistics and the per-item judgements."""

    stats: WinRateResult
    judgments: Judgments

    def to_dict(self) -> dict[str, Any]:
        return {**self.stats.to_dict(), "judge": self.judgments.judge,
                "failed": self.judgments.failed}


def judged_win_rate(judge: Judge, prompts: Sequence[Any], policy: Sequence[Any],
                    baseline: Sequence[Any], *, seed: int = 0,
                    progress: bool = True) -> JudgedWinRate:
    """Judge ``policy[i]`` against ``baseline[i]`` on ``prompts[i]`` and summarise with
    :func:`win_rate_stats` (length-controlled on the responses' character counts); items the
    judge failed on are left out and listed."""
    judged = judge_pairs(judge, prompts, policy, baseline, progress=progress)
    ok = judged.ok
    lengths = np.array([_length(a) - _length(b) for a, b in zip(policy, baseline, strict=True)],
                       dtype=float)
    return JudgedWinRate(win_rate_stats(judged.outcomes[ok], lengths[ok], seed=seed), judged)
