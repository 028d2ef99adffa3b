"""Worst-group and per-group held-out accuracy and margin, with bootstrap intervals.

For pairs ``i`` with margins ``Δ_i`` and groups ``g_i`` (e.g. from
:func:`pluralign.data.groups.group_ids`), a pair is *correct* when ``Δ_i > 0`` (the policy ranks
the annotator's chosen response higher; a tie counts as wrong, as in training). Per group
``acc_g = mean_{i∈g} [Δ_i > 0]``; the **worst-group accuracy** is ``min_g acc_g`` (the quantity
group-robust optimisation targets, Ramesh et al. 2024, arXiv 2405.20304), the worst-group margin
``min_g mean_{i∈g} Δ_i``. Per-group rows and the micro/macro averages come from
:func:`~pluralign.evaluation.subgroups.subgroup_table`. The minima's intervals are percentile
intervals of the minimum recomputed on resamples of pairs, or of whole clusters of pairs
(``cluster="annotator_id"``: one annotator's pairs are not independent)
(:mod:`pluralign.evaluation.bootstrap`);
a group that a resample happens to miss is left out of that resample's minimum.
:func:`worst_group_gain` is the paired version: both methods' outcomes on the same resampled
pairs, so the interval is that of the difference of the two minima.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pluralign.evaluation.bootstrap import bootstrap_statistic, percentile_interval
from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.subgroups import Estimate, SubgroupTable, subgroup_table

CORRECT = "correct"


@dataclass
class WorstGroupSummary:
    """Result of :func:`worst_group_summary`.

    Attributes:
        accuracy: per-group accuracy table with micro/macro averages and CIs.
        margin: the same for the mean margin.
        worst_group_accuracy: ``min_g acc_g`` with its bootstrap interval (``n`` = pairs).
        worst_group_margin: ``min_g mean margin_g`` with its interval.
        worst_group: name of the group with the lowest accuracy.
    """

    accuracy: SubgroupTable
    margin: SubgroupTable
    worst_group_accuracy: Estimate
    worst_group_margin: Estimate
    worst_group: str

    def to_dict(self) -> dict[str, Any]:
        return {"worst_group": self.worst_group,
                "worst_group_accuracy": self.worst_group_accuracy.to_dict(),
                "worst_group_margin": self.worst_group_margin.to_dict(),
                "accuracy": self.accuracy.to_dict(), "margin": self.margin.to_dict()}


def _outcomes(df: pd.DataFrame, group: str, value: str) -> tuple[np.ndarray, np.ndarray]:
    for column in (group, value):
        if column not in df.columns:
            raise EvaluationError(f"column {column!r} not found; available: "
                                  f"{sorted(map(str, df.columns))}")
    x = pd.to_numeric(df[value], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(x).all():
        raise EvaluationError(f"{int((~np.isfinite(x)).sum())} rows have a NaN or infinite "
                              f"{value!r}; worst-group statistics need every pair")
    codes, _ = pd.factorize(df[group].astype("string"), use_na_sentinel=True)
    if (codes < 0).any():
        raise EvaluationError(f"{int((codes < 0).sum())} rows have no {group!r}; map missing "
                              "groups first (pluralign.data.groups, missing='unknown')")
    return x, codes


def _group_min(values: np.ndarray, codes: np.ndarray, idx: np.ndarray) -> float:
    k = int(codes.max()) + 1
    counts = np.bincount(codes[idx], minlength=k)
    sums = np.bincount(codes[idx], weights=values[idx], minlength=k)
    return float(np.min(sums[counts > 0] / counts[counts > 0]))


def _clusters(df: pd.DataFrame, cluster: str | None) -> np.ndarray | None:
    if cluster is None:
        return None
    if cluster not in df.columns:
        raise EvaluationError(f"cluster column {cluster!r} not found; available: "
                              f"{sorted(map(str, df.columns))}")
    return df[cluster].astype("string").fillna("<missing>").to_numpy()


def _worst(values: np.ndarray, codes: np.ndarray, n_boot: int, level: float,
           rng: np.random.Generator, clusters: np.ndarray | None = None) -> Estimate:
    point = _group_min(values, codes, np.arange(values.size))
    boot = bootstrap_statistic(values.size, lambda i: _group_min(values, codes, i), n_boot, rng,
                               clusters)
    return Estimate(point, *percentile_interval(boot, level), n=int(values.size))


def with_correct(df: pd.DataFrame, value: str = "margin") -> pd.DataFrame:
    """``df`` with a ``correct`` column, ``1.0`` where ``value > 0`` else ``0.0``."""
    out = df.copy()
    out[CORRECT] = (pd.to_numeric(out[value], errors="coerce") > 0).astype(float)
    return out


def worst_group_summary(df: pd.DataFrame, group: str, value: str = "margin", *,
                        n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                        cluster: str | None = None) -> WorstGroupSummary:
    """Per-group, micro, macro and worst-group accuracy and margin (see the module docstring);
    ``cluster`` (e.g. ``"annotator_id"``) resamples whole clusters in every interval."""
    data = with_correct(df, value)
    margins, codes = _outcomes(data, group, value)
    correct = data[CORRECT].to_numpy(dtype=float)
    clusters = _clusters(data, cluster)
    rng = np.random.default_rng(seed)
    accuracy = subgroup_table(data, [group], CORRECT, n_boot=n_boot, level=level, seed=seed,
                              cluster=cluster)
    margin = subgroup_table(data, [group], value, n_boot=n_boot, level=level, seed=seed,
                            cluster=cluster)
    rows = accuracy.groups[accuracy.groups["count"] > 0]
    worst = str(rows.loc[rows["mean"].idxmin(), "group"])
    return WorstGroupSummary(accuracy, margin, _worst(correct, codes, n_boot, level, rng, clusters),
                             _worst(margins, codes, n_boot, level, rng, clusters), worst)


def worst_group_gain(run: pd.DataFrame, baseline: pd.DataFrame, group: str,
                     value: str = "margin", *, n_boot: int = 1000, level: float = 0.95,
                     seed: int = 0, cluster: str | None = None) -> dict[str, Any]:
    """Paired-bootstrap gain ``min_g acc_g(run) − min_g acc_g(baseline)`` on the same pairs.

    Rows are matched by position (evaluate both methods on the same pairs in the same order;
    their ``group`` columns must agree). ``cluster`` (a column of ``run``, e.g.
    ``"annotator_id"``) resamples whole clusters. Returns ``{"estimate", "ci": [low, high],
    "level", "n_boot", "n", "cluster"}``.
    """
    if len(run) != len(baseline):
        raise EvaluationError(f"run has {len(run)} pairs but baseline {len(baseline)}; evaluate "
                              "both on the same held-out pairs")
    a, codes = _outcomes(with_correct(run, value), group, CORRECT)
    b, codes_b = _outcomes(with_correct(baseline, value), group, CORRECT)
    if not np.array_equal(run[group].astype("string").to_numpy(),
                          baseline[group].astype("string").to_numpy()):
        raise EvaluationError(f"run and baseline disagree on {group!r}; rows must be the same "
                              "pairs in the same order")

    def gain(idx: np.ndarray) -> float:
        return _group_min(a, codes, idx) - _group_min(b, codes_b, idx)

    boot = bootstrap_statistic(a.size, gain, n_boot, np.random.default_rng(seed),
                               _clusters(run, cluster))
    low, high = percentile_interval(boot, level)
    return {"estimate": gain(np.arange(a.size)), "ci": [low, high], "level": level,
            "n_boot": n_boot, "n": int(a.size), "cluster": cluster}
