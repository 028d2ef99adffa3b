"""Per-subgroup preference strength: one fitted p(β) per group and a test that they are equal.

What it measures. For the comparisons of one subgroup, :func:`fit_strength` finds the strength
distribution under which the group's labels are most likely given the margins ([MixDPO, Eq. 3]):
E[β] says how sharply the group's labels follow the margin (a group whose labels agree with the
margin's sign more often at the same |Δ| has a larger E[β]); CV² = Var β / (E β)² says how unevenly
that sharpness is spread among the group's comparisons (annotators). Means are in the units of
the margins, so groups are comparable only when their margins come from the same model.

It replaces ranking groups by the mean posterior ``E[β | pair]``: that posterior is a function of
Δ alone under one fitted distribution, is not monotone in Δ, and so mostly measures how often the
model disagrees with the group's labels, not how strongly the group prefers.

The equality test (H0: every group has the same p(β)):

* independent comparisons (``cluster=None``): likelihood ratio ``2(Σ_g ℓ_g − ℓ_pooled)`` against
  χ² with ``2(G − 1)`` degrees of freedom;
* comparisons clustered by annotator (one β per annotator, so the comparisons of a group are not
  independent and the likelihood ratio is too liberal): a Wald test on
  ``θ_g = (log E β_g, log CV²_g)`` with each group's covariance from its cluster bootstrap,
  ``Σ_g (θ_g − θ̄)ᵀ Σ_g⁻¹ (θ_g − θ̄)`` against χ² with ``2(G − 1)`` degrees of freedom (θ̄ the
  precision-weighted mean; groups must not share annotators).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.strength_fit import StrengthFit, fit_strength

#: Groups with fewer comparisons are not fitted (reported with a note).
MIN_GROUP_SIZE = 30


@dataclass
class SubgroupStrength:
    """Per-group fits and, per attribute, the equality test.

    Attributes:
        table: one row per (attribute, group): ``n``, ``mean``, ``mean_ci_low/high``, ``cv2``,
            ``cv2_ci_low/high``, ``identified`` and ``notes``.
        tests: attribute -> ``{"test": "likelihood ratio" | "cluster-bootstrap Wald",
            "statistic", "df", "pvalue"}``.
        fits: (attribute, group) -> the group's :class:`StrengthFit`.
    """

    table: pd.DataFrame
    tests: dict[str, dict[str, Any]] = field(default_factory=dict)
    fits: dict[tuple[str, str], StrengthFit] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: a group that was not fitted has ``null`` estimates (JSON has no NaN)."""
        table = self.table.astype(object).where(self.table.notna(), None)
        return {"table": table.to_dict(orient="records"), "tests": self.tests}

    def summary(self, level: float = 0.05) -> list[str]:
        """One line per attribute: the test, and the extreme groups only if it rejects."""
        lines = []
        for attr, test in self.tests.items():
            rows = self.table[(self.table["attribute"] == attr) & self.table["mean"].notna()]
            head = f"strength by {attr}: {test['test']} p = {test['pvalue']:.3g}"
            if test["pvalue"] < level and len(rows) >= 2:
                lo, hi = rows.loc[rows["mean"].idxmin()], rows.loc[rows["mean"].idxmax()]
                lines.append(f"{head}; groups differ — strongest {attr}={hi['group']} "
                             f"(E[β] {hi['mean']:.3g}, CV² {hi['cv2']:.3g}), weakest "
                             f"{attr}={lo['group']} (E[β] {lo['mean']:.3g}, CV² {lo['cv2']:.3g})")
            else:
                lines.append(f"{head}; no evidence that the groups' strength distributions differ")
        return lines


def _wald(fits: Sequence[StrengthFit]) -> tuple[float, int]:
    thetas, precisions = [], []
    for f in fits:
        draws = np.column_stack([np.log(f.samples[:, 0]),
                                 np.log(f.samples[:, 1] / f.samples[:, 0] ** 2)])
        thetas.append(np.array([np.log(f.mean), np.log(f.cv2)]))
        precisions.append(np.linalg.pinv(np.cov(draws, rowvar=False)))
    pooled = np.linalg.solve(sum(precisions), sum(p @ t for p, t in zip(precisions, thetas,
                                                                        strict=True)))
    stat = float(sum((t - pooled) @ p @ (t - pooled) for p, t in zip(precisions, thetas,
                                                                     strict=True)))
    return stat, 2 * (len(fits) - 1)


def subgroup_strength(
    df: pd.DataFrame,
    by: Sequence[str],
    *,
    margin: str = "margin",
    family: str = "gamma",
    cluster: str | None = None,
    groups: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> SubgroupStrength:
    """Fit ``p(β)`` on each subgroup's margins and test equality across the groups of each
    attribute in ``by`` (see the module docstring for what this measures).

    Args:
        df: one row per comparison, with the ``margin`` column and the ``by`` columns.
        by: attribute columns (each analysed separately).
        margin: the margin column.
        family: ``"gamma"`` or ``"lognormal"``.
        cluster: column whose values share one β (e.g. ``"annotator_id"``): the bootstrap
            resamples it and the equality test is the cluster-bootstrap Wald test.
        groups: annotator-id column: each subgroup is fitted with the panel likelihood (one β
            per annotator, annotator bootstrap) and the equality test is the cluster-bootstrap
            Wald test on annotators (an annotator must not appear in two subgroups).
        n_boot: bootstrap refits per group (the Wald test needs at least 20).
        seed: bootstrap seed.
    """
    extra = [c for c in (cluster, groups) if c]
    missing = [c for c in [margin, *by, *extra] if c not in df.columns]
    if missing:
        raise EvaluationError(f"subgroup_strength: no column(s) {missing}; available: "
                              f"{sorted(map(str, df.columns))}")
    if groups is not None and cluster is None:
        cluster = groups
    if cluster is not None and n_boot < 20:
        raise EvaluationError("subgroup_strength: the clustered equality test needs n_boot >= 20")
    rows, tests, fits = [], {}, {}
    for attr in by:
        fitted: list[StrengthFit] = []
        fitted_margins: list[np.ndarray] = []
        for i, (group, part) in enumerate(df.groupby(attr, sort=True, dropna=True)):
            row: dict[str, Any] = {"attribute": attr, "group": str(group), "n": len(part)}
            values = part[margin].to_numpy(dtype=float)
            if len(part) < MIN_GROUP_SIZE or not ((values < 0).any() and (values > 0).any()):
                rows.append({**row, "mean": np.nan, "cv2": np.nan, "identified": False,
                             "notes": f"not fitted: fewer than {MIN_GROUP_SIZE} comparisons or "
                                      "one-signed margins"})
                continue
            f = fit_strength(values, family, n_boot=n_boot, seed=seed + i,
                             clusters=None if cluster is None else part[cluster].tolist(),
                             groups=None if groups is None else part[groups].tolist())
            fits[(attr, str(group))] = f
            fitted.append(f)
            fitted_margins.append(values)
            ci = {"mean_ci": f.mean_ci or (np.nan, np.nan), "cv2_ci": f.cv2_ci or (np.nan, np.nan)}
            rows.append({**row, "mean": f.mean, "mean_ci_low": ci["mean_ci"][0],
                         "mean_ci_high": ci["mean_ci"][1], "cv2": f.cv2,
                         "cv2_ci_low": ci["cv2_ci"][0], "cv2_ci_high": ci["cv2_ci"][1],
                         "identified": f.identified, "notes": "; ".join(f.notes)})
        if len(fitted) < 2:
            continue
        if cluster is None:
            pooled = fit_strength(np.concatenate(fitted_margins), family, n_boot=0)
            stat = max(0.0, 2 * (sum(f.loglik for f in fitted) - pooled.loglik))
            dof, name = 2 * (len(fitted) - 1), "likelihood ratio"
        else:
            if any(f.samples is None or len(f.samples) < 20 for f in fitted):
                continue
            (stat, dof), name = _wald(fitted), "cluster-bootstrap Wald"
        tests[attr] = {"test": name, "statistic": stat, "df": dof,
                       "pvalue": float(stats.chi2.sf(stat, dof))}
    return SubgroupStrength(table=pd.DataFrame(rows), tests=tests, fits=fits)
