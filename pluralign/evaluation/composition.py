"""Composition matrix: whose feedback a model is trained on vs whose preferences it then fits
([COMPOSITION]: models trained on one demographic group's feedback differ by 3–5 points).

For an annotator attribute with groups ``g = 1..G``: train one model per group on a size-matched
subset of that group's training pairs (so groups differ only in *who* labelled, not in how much
data), then evaluate every model on every group's held-out pairs. Cell ``(a, b)`` is the mean
held-out margin (and the preference accuracy, the share of pairs with margin > 0, in percent) of
the model trained on group ``a`` evaluated on group ``b``, with a bootstrap CI over pairs (or
over annotators, ``cluster="annotator_id"``: one annotator's pairs are not independent). With
``mix`` one more model, trained on as many pairs drawn from all groups together, is the row
``mix`` (the pooled-feedback baseline every group-specific model is compared with).

Own-group advantage: mean diagonal minus mean off-diagonal of the square (group × group) part,
in margin units and, for accuracy, in percentage points ([COMPOSITION] reports 3.4–5.0 pp).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import pandas as pd

from pluralign.data.splits import attribute_values, size_matched_subsets
from pluralign.evaluation.bootstrap import bootstrap_statistic, percentile_interval
from pluralign.evaluation.errors import EvaluationError

#: Row of the model trained on pairs from all groups (``mix=True``).
MIX = "mix"
#: Trains a model on one group's pairs and returns it.
TrainFn = Callable[[datasets.Dataset], Any]
#: Scores a model on pairs: one margin per pair (positive = agrees with the label).
ScoreFn = Callable[[Any, datasets.Dataset], np.ndarray]


@dataclass
class CompositionResult:
    """Matrices indexed by trained-on group (rows) and evaluated-on group (columns)."""

    attribute: str
    margin: pd.DataFrame
    margin_ci_low: pd.DataFrame
    margin_ci_high: pd.DataFrame
    accuracy: pd.DataFrame
    train_size: int
    test_counts: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        def frame(df: pd.DataFrame) -> dict[str, dict[str, float]]:
            return {str(r): {str(c): float(v) for c, v in row.items()} for r, row in
                    df.iterrows()}

        return {"attribute": self.attribute, "train_size": self.train_size,
                "test_counts": self.test_counts, "margin": frame(self.margin),
                "margin_ci_low": frame(self.margin_ci_low),
                "margin_ci_high": frame(self.margin_ci_high), "accuracy": frame(self.accuracy)}

    def to_frame(self) -> pd.DataFrame:
        """Long form: one row per (trained on, evaluated on) cell with CI, accuracy and n."""
        return pd.DataFrame([
            {"trained_on": a, "evaluated_on": b, "margin": self.margin.at[a, b],
             "ci_low": self.margin_ci_low.at[a, b], "ci_high": self.margin_ci_high.at[a, b],
             "accuracy_pct": self.accuracy.at[a, b], "n_test": self.test_counts[b]}
            for a in self.margin.index for b in self.margin.columns])

    def own_group_advantage(self, value: str = "margin") -> float:
        """Mean of the diagonal minus mean of the off-diagonal cells of the group × group part
        of ``value`` (``"margin"`` or ``"accuracy"``, pp): how much better models fit the group
        they were trained on than the other groups (0 for one group)."""
        frame = self.margin if value == "margin" else self.accuracy
        names = list(frame.columns)
        m = frame.loc[names, names].to_numpy(dtype=float)
        if len(m) < 2:
            return 0.0
        off = ~np.eye(len(m), dtype=bool)
        return float(np.diag(m).mean() - m[off].mean())

    def summary(self) -> list[str]:
        """Plain-language lines for reports: sizes, the advantage, and per-group best fit."""
        lines = [f"{len(self.margin.columns)} groups of {self.attribute!r}, each model trained on "
                 f"{self.train_size} pairs; held-out pairs per group: {self.test_counts}.",
                 f"Own-group advantage (mean diagonal − mean off-diagonal): "
                 f"{self.own_group_advantage('accuracy'):+.3g} pp of held-out accuracy, "
                 f"{self.own_group_advantage():+.4g} in margin."]
        for b in self.margin.columns:
            col, acc = self.margin[b].drop(MIX, errors="ignore"), self.accuracy[b]
            lines.append(f"Evaluated on {b}: best fit by the model trained on {col.idxmax()} "
                         f"(margin {col.max():+.4g}); accuracy spread across training groups "
                         f"{acc.max() - acc.min():.3g} points.")
        return lines


def composition_matrix(
    train: datasets.Dataset,
    test: datasets.Dataset,
    attribute: str,
    train_fn: TrainFn,
    score_fn: ScoreFn,
    *,
    n: int | None = None,
    groups: list[str] | None = None,
    n_boot: int = 500,
    level: float = 0.95,
    seed: int = 0,
    mix: bool = False,
    cluster: str | None = None,
) -> CompositionResult:
    """Train per group on ``n`` pairs each (default: the smallest group's count), score on all.

    Args:
        train, test: schema datasets (annotator ``attributes`` carry ``attribute``).
        attribute: annotator attribute defining the groups (e.g. ``"education"``).
        train_fn: ``train_fn(subset) -> model``.
        score_fn: ``score_fn(model, pairs) -> margins`` (e.g. from :func:`preference_margins`).
        n: pairs per group for training.
        groups: groups to use (default: all present in ``train``; then every pair must carry
            ``attribute``).
        mix: also train on ``n`` pairs drawn from all the groups' training pairs (row ``mix``).
        cluster: a column of ``test`` whose values are resampled whole in the cell intervals
            (e.g. ``"annotator_id"``); None resamples pairs.
    """
    if groups is None:
        for name, split in (("training", train), ("held-out", test)):
            values = attribute_values(split, attribute, "attributes")
            missing = int(sum(v is None for v in values))
            if missing:
                raise EvaluationError(
                    f"composition_matrix: {missing} {name} pairs have no {attribute!r} (first at "
                    f"row {[v is None for v in values].index(True)}); give every annotator a "
                    f"value or name the groups to compare with groups=[...]")
    subsets = size_matched_subsets(train, attribute, n=n, seed=seed, values=groups)
    test_groups = np.asarray([v if v is not None else "" for v in
                              attribute_values(test, attribute, "attributes")], dtype=object)
    names = list(subsets)
    tests = {g: test.select(np.flatnonzero(test_groups == g)) for g in names}
    empty = [g for g, d in tests.items() if len(d) == 0]
    if empty:
        raise EvaluationError(f"composition_matrix: no held-out pairs for {attribute}={empty}; "
                              "use a larger test split or drop those groups")
    if cluster is not None and cluster not in test.column_names:
        raise EvaluationError(f"composition_matrix: cluster column {cluster!r} not in the "
                              f"held-out pairs; available: {sorted(test.column_names)}")
    rows = dict(subsets)
    if mix:
        size = len(next(iter(subsets.values())))
        train_groups = np.asarray(attribute_values(train, attribute, "attributes"), dtype=object)
        pool = np.flatnonzero(np.isin(train_groups, names))
        pick = np.random.default_rng([seed, 1]).choice(pool, size=size, replace=False)
        rows[MIX] = train.select(np.sort(pick))
    rng = np.random.default_rng(seed)
    cells: dict[tuple[str, str], tuple[float, float, float, float]] = {}
    for a, subset in rows.items():
        model = train_fn(subset)
        for b in names:
            m = np.asarray(score_fn(model, tests[b]), dtype=float)
            if m.shape != (len(tests[b]),) or not np.all(np.isfinite(m)):
                raise EvaluationError(f"score_fn returned {m.shape} values (finite: "
                                      f"{bool(np.all(np.isfinite(m)))}) for {len(tests[b])} pairs")
            clusters = None if cluster is None else np.asarray(tests[b][cluster]).astype(str)
            lo, hi = percentile_interval(
                bootstrap_statistic(m.size, lambda idx, m=m: m[idx].mean(), n_boot, rng,
                                    clusters), level)
            cells[a, b] = (float(m.mean()), lo, hi, 100.0 * float((m > 0).mean()))

    def matrix(k: int) -> pd.DataFrame:
        return pd.DataFrame([[cells[a, b][k] for b in names] for a in rows], index=list(rows),
                            columns=names).rename_axis(index="trained on", columns="evaluated on")

    return CompositionResult(attribute=attribute, margin=matrix(0), margin_ci_low=matrix(1),
                             margin_ci_high=matrix(2), accuracy=matrix(3),
                             train_size=len(next(iter(subsets.values()))),
                             test_counts={g: len(d) for g, d in tests.items()})
