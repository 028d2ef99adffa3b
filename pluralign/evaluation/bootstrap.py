"""Nonparametric bootstrap helpers shared by the subgroup, win-rate and strength-fit statistics.

All intervals are percentile intervals (Efron & Tibshirani 1993, ch. 13): the ``(1-level)/2`` and
``(1+level)/2`` quantiles of the statistic recomputed on resamples drawn with replacement.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval ``(q_{(1-level)/2}, q_{(1+level)/2})`` of bootstrap ``samples``."""
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
    return np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=float)
