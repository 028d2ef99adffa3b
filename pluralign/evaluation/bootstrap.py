"""Nonparametric bootstrap helpers shared by the subgroup, win-rate and strength-fit statistics.

All intervals are percentile intervals (Efron & Tibshirani 1993, ch. 13): the ``(1-level)/2`` and
``(1+level)/2`` quantiles of the statistic recomputed on resamples drawn with replacement.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pluralign.evaluation.errors import EvaluationError
from pluralign.validation import check_number


def check_level(level: object) -> float:
    """``level`` as a float in the open interval (0, 1), else :class:`EvaluationError`."""
    return check_number(level, "level", minimum=0, maximum=1, exclusive_minimum=True,
                        exclusive_maximum=True, error=EvaluationError)


def check_n_boot(n_boot: object) -> int:
    """``n_boot`` as a positive int (bootstrap resamples), else :class:`EvaluationError`."""
    return int(check_number(n_boot, "n_boot", minimum=1, integer=True, error=EvaluationError))


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
    clusters: np.ndarray | None = None,
) -> np.ndarray:
    """Values of ``statistic(indices)`` on ``n_boot`` resamples of ``range(n)`` (paired bootstrap).

    ``statistic`` receives one index array per resample, so arrays indexed by the same units
    (e.g. two models' outcomes on the same prompts) are resampled together. With ``clusters``
    (one cluster code per row, e.g. the annotator of each pair) whole clusters are drawn with
    replacement, as many as there are, and the index array holds every row of each drawn cluster
    (the cluster bootstrap, Davison & Hinkley 1997 §3.8: rows of one annotator are not
    independent, so resampling them one by one understates the spread).
    """
    n_boot = check_n_boot(n_boot)
    if clusters is None:
        return np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_boot)],
                        dtype=float)
    codes = np.asarray(clusters)
    if codes.shape != (n,):
        raise EvaluationError(f"clusters has shape {codes.shape}; need one code per row ({n})")
    _, inverse = np.unique(codes, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    k = len(members)
    return np.array([statistic(np.concatenate([members[j] for j in rng.integers(0, k, size=k)]))
                     for _ in range(n_boot)], dtype=float)
