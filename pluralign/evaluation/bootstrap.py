"""Nonparametric bootstrap helpers shared by the subgroup, win-rate and strength-fit statistics.

All intervals are percentile intervals (Efron & Tibshirani 1993, ch. 13): the ``(1-level)/2`` and
``(1+level)/2`` quantiles of the statistic recomputed on resamples drawn with replacement.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral, Real

import numpy as np

from pluralign.evaluation.errors import EvaluationError


def check_level(level: object) -> float:
    """``level`` as a float in the open interval (0, 1), else :class:`EvaluationError`."""
    if isinstance(level, bool) or not isinstance(level, Real) or not 0 < float(level) < 1:
        raise EvaluationError(
            f"level={level!r} is not a confidence level; use a number strictly between 0 and 1 "
            "(e.g. 0.95)")
    return float(level)


def check_n_boot(n_boot: object) -> int:
    """``n_boot`` as a positive int, else :class:`EvaluationError`."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, Integral) or n_boot < 1:
        raise EvaluationError(
            f"n_boot={n_boot!r} is not a number of bootstrap resamples; use an integer >= 1 "
            "(e.g. 1000)")
    return int(n_boot)


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval ``(q_{(1-level)/2}, q_{(1+level)/2})`` of bootstrap ``samples``."""
    level = check_level(level)
    lo, hi = np.quantile(np.asarray(samples, dtype=float), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_statistic(
    n: int,
    statistic: Callable[[np.ndarray], float],
    n_boot: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Values of ``statistic(indices)`` on ``n_boot`` resamples of ``range(n)`` (paired bootstrap).

    ``statistic`` receives one index array of length ``n`` per resample, so arrays indexed by the
    same units (e.g. two models' outcomes on the same prompts) are resampled together.
    """
    n_boot = check_n_boot(n_boot)
    return np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=float)
