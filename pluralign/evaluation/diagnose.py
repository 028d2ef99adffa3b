"""Preference-strength heterogeneity diagnostic (seeds/000; seeds/001 §5.3, Fig. 4).

Four views of how strongly, and how differently, a population expresses its preferences:

a) :func:`trajectory_verdict` reads a MixDPO run's logged ``beta_var`` (and ``beta_mean``)
   trajectory and says whether the learned distribution collapsed toward a point mass;
b) :func:`pluralign.evaluation.strength_fit.fit_strength` fits the distribution on fixed margins,
   with no language-model training;
c) :func:`posterior_strengths` gives each comparison's posterior mean strength
   ``E[β | chosen ≻ rejected, Δ] = E_β[β σ(βΔ)] / E_β[σ(βΔ)]`` under the fitted distribution, and
   :func:`diagnose` tabulates it by subgroup (which groups express strong vs weak preferences);
d) :func:`compare_heterogeneity` fits several datasets and compares their variances (and scale-free
   CV² = Var β / (E β)²) with bootstrap intervals on each value and each pairwise difference.

"Collapsed" is judged on the scale-free CV², because β multiplies the margin and its units are
those of the margin: a variance alone can shrink just because the mean does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pluralign.evaluation.bootstrap import percentile_interval
from pluralign.evaluation.errors import EvaluationError, require_column
from pluralign.evaluation.strength_fit import StrengthFit, fit_strength
from pluralign.evaluation.subgroups import SubgroupTable, subgroup_table

#: A distribution with CV² = Var β / (E β)² below this is called collapsed (sd < 22% of the mean).
COLLAPSE_CV2 = 0.05
#: ... as is one whose variance fell below this fraction of its initial value.
COLLAPSE_FRACTION = 0.25
#: A trajectory whose variance still moves by more than this (relative) over its last quarter is
#: flagged as not converged.
DRIFT_TOLERANCE = 0.10


@dataclass
class TrajectoryVerdict:
    """Summary of a learned strength distribution's variance over training steps."""

    steps: list[float]
    variance: list[float]
    mean: list[float] | None
    initial_variance: float
    final_variance: float
    final_cv2: float | None
    verdict: str  # "collapsed" | "heterogeneous"
    converged: bool
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_log_history(run: str | os.PathLike[str] | Sequence[Mapping[str, Any]]
                     ) -> list[Mapping[str, Any]]:
    """``log_history`` of a run folder (``trainer_state.json``, also searched in checkpoints)."""
    if not isinstance(run, (str, os.PathLike)):
        return list(run)
    path = Path(run)
    checkpoints = sorted(path.glob("checkpoint-*/trainer_state.json"),
                         key=lambda p: int(p.parent.name.split("-")[-1]), reverse=True)
    candidates = [path] if path.is_file() else [path / "trainer_state.json", *checkpoints]
    for cand in candidates:
        if cand.is_file():
            try:
                return list(json.loads(cand.read_text(encoding="utf-8"))["log_history"])
            except (json.JSONDecodeError, KeyError) as exc:
                raise EvaluationError(f"{cand}: not a trainer_state.json with a log_history "
                                      f"({exc})") from exc
    raise EvaluationError(f"{path}: no trainer_state.json found; pass a finished training run "
                          "folder (pluralign train writes one)")


def trajectory_verdict(run: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
                       key: str = "beta_var", mean_key: str = "beta_mean") -> TrajectoryVerdict:
    """Verdict on a run's logged strength-variance trajectory (view a).

    ``collapsed`` when the final CV² is below :data:`COLLAPSE_CV2` or the variance fell below
    :data:`COLLAPSE_FRACTION` of its initial value; otherwise ``heterogeneous``.
    """
    history = load_log_history(run)
    rows = [h for h in history if key in h and h[key] is not None]
    if not rows:
        raise EvaluationError(f"the run's log history has no {key!r} entries; the diagnostic "
                              "needs a MixDPO run with a learnable strength distribution")
    steps = [float(h.get("step", i)) for i, h in enumerate(rows)]
    var = [float(h[key]) for h in rows]
    means = [float(h[mean_key]) for h in rows] if all(mean_key in h for h in rows) else None
    if not np.all(np.isfinite(var)):
        bad = [s for s, v in zip(steps, var, strict=True) if not np.isfinite(v)]
        raise EvaluationError(f"non-finite {key!r} values in the log history (steps {bad})")
    cv2 = var[-1] / means[-1] ** 2 if means and means[-1] > 0 else None
    quarter = var[int(len(var) * 0.75):] if len(var) >= 4 else var
    drift = (max(quarter) - min(quarter)) / max(abs(var[-1]), 1e-300)
    collapsed_cv = cv2 is not None and cv2 < COLLAPSE_CV2
    collapsed_drop = var[0] > 0 and var[-1] < COLLAPSE_FRACTION * var[0]
    if collapsed_cv or collapsed_drop:
        why = (f"CV² = {cv2:.3g} < {COLLAPSE_CV2}" if collapsed_cv
               else f"variance fell to {var[-1] / var[0]:.2f} of its initial value")
        verdict, text = "collapsed", f"collapsed toward a point mass ({why})"
    else:
        verdict = "heterogeneous"
        text = (f"retains spread: variance {var[0]:.3g} → {var[-1]:.3g}"
                + (f", CV² = {cv2:.3g}" if cv2 is not None else ""))
    converged = drift <= DRIFT_TOLERANCE
    if not converged:
        text += f"; still moving ({drift:.0%} over the last quarter of logged steps)"
    return TrajectoryVerdict(steps=steps, variance=var, mean=means, initial_variance=var[0],
                             final_variance=var[-1], final_cv2=cv2, verdict=verdict,
                             converged=converged, explanation=text)


def posterior_strengths(fit: StrengthFit, margins: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per-comparison ``E[β | chosen ≻ rejected, Δ]`` under the fitted distribution (view c)."""
    m = torch.as_tensor(np.asarray(margins, dtype=float), dtype=torch.float64)
    with torch.no_grad():
        return fit.distribution().posterior_mean(m).double().numpy()


@dataclass
class HeterogeneityComparison:
    """Fits of several datasets and pairwise differences of their variance and CV²."""

    fits: dict[str, StrengthFit]
    ranking: list[str]  # by fitted variance, largest first
    differences: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"fits": {k: v.to_dict() for k, v in self.fits.items()}, "ranking": self.ranking,
                "differences": self.differences}


def compare_heterogeneity(margins: Mapping[str, Sequence[float] | np.ndarray],
                          family: str = "gamma", *, n_boot: int = 200, level: float = 0.95,
                          clusters: Mapping[str, Sequence[Any]] | None = None,
                          seed: int = 0) -> HeterogeneityComparison:
    """Fit each dataset's strength distribution and compare them (view d).

    Differences ``Var_a − Var_b`` (and of CV²) get percentile intervals from the two independent
    bootstraps (draw ``j`` of one minus draw ``j`` of the other).
    """
    if len(margins) < 2:
        raise EvaluationError("compare_heterogeneity needs at least two datasets")
    fits = {name: fit_strength(m, family, n_boot=n_boot, level=level, seed=seed + i,
                               clusters=(clusters or {}).get(name))
            for i, (name, m) in enumerate(margins.items())}
    ranking = sorted(fits, key=lambda k: fits[k].variance, reverse=True)
    diffs = []
    for i, a in enumerate(ranking):
        for b in ranking[i + 1:]:
            fa, fb = fits[a], fits[b]
            entry: dict[str, Any] = {"a": a, "b": b, "variance_diff": fa.variance - fb.variance,
                                     "cv2_diff": fa.cv2 - fb.cv2}
            if fa.samples is not None and fb.samples is not None:
                k = min(len(fa.samples), len(fb.samples))
                sa, sb = fa.samples[:k], fb.samples[:k]
                entry["variance_diff_ci"] = list(percentile_interval(sa[:, 1] - sb[:, 1], level))
                entry["cv2_diff_ci"] = list(percentile_interval(
                    sa[:, 1] / sa[:, 0] ** 2 - sb[:, 1] / sb[:, 0] ** 2, level))
            diffs.append(entry)
    return HeterogeneityComparison(fits=fits, ranking=ranking, differences=diffs)


@dataclass
class Diagnosis:
    """Everything :func:`diagnose` found; ``summary`` has one line per finding."""

    fit: StrengthFit | None = None
    posterior: pd.Series | None = None
    profiles: SubgroupTable | None = None
    trajectories: dict[str, TrajectoryVerdict] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fit": self.fit.to_dict() if self.fit else None,
            "posterior_beta": (None if self.posterior is None else
                               {"mean": float(self.posterior.mean()),
                                "quantiles": {str(q): float(self.posterior.quantile(q))
                                              for q in (0.05, 0.25, 0.5, 0.75, 0.95)}}),
            "profiles": self.profiles.to_dict() if self.profiles else None,
            "trajectories": {k: v.to_dict() for k, v in self.trajectories.items()},
            "summary": self.summary,
        }


def diagnose(
    df: pd.DataFrame | None = None,
    *,
    margin: str = "margin",
    family: str = "gamma",
    by: Sequence[str] = (),
    runs: Mapping[str, str | os.PathLike[str] | Sequence[Mapping[str, Any]]] | None = None,
    cluster: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> Diagnosis:
    """Heterogeneity report from fixed margins and/or training runs' strength trajectories.

    Args:
        df: one row per comparison with a ``margin`` column (and attribute columns for ``by``).
        margin: the margin column (``"margin"``, or a synthetic population's ``"true_margin"``).
        family: strength family to fit, ``"gamma"`` or ``"lognormal"``.
        by: attribute columns for the per-subgroup posterior-strength profile.
        runs: name -> run folder / log history of MixDPO runs, for trajectory verdicts.
        cluster: column whose values share one β (e.g. ``"annotator_id"``) for the bootstrap.
        n_boot: bootstrap refits for the fit's intervals.
        seed: bootstrap seed.
    """
    if df is None and not runs:
        raise EvaluationError("diagnose needs margins (df) or training runs (runs=...)")
    out = Diagnosis()
    if df is not None:
        if margin not in df.columns:
            raise EvaluationError(f"no {margin!r} column; available: "
                                  f"{sorted(map(str, df.columns))}")
        if cluster is not None:
            require_column(df.columns, cluster, "cluster column")
        values = pd.to_numeric(df[margin], errors="coerce").to_numpy(dtype=float)
        finite = np.isfinite(values)
        if not finite.all():
            out.summary.append(f"{int((~finite).sum())} comparisons with NaN/inf margins excluded")
        data = df.loc[finite]
        out.fit = fit_strength(values[finite], family, n_boot=n_boot, seed=seed,
                               clusters=None if cluster is None else data[cluster].tolist())
        f = out.fit
        ci = (f"[{f.variance_ci[0]:.3g}, {f.variance_ci[1]:.3g}]" if f.variance_ci else "n/a")
        out.summary.append(
            f"fitted {family} strength: mean {f.mean:.3g}, variance {f.variance:.3g} "
            f"(95% CI {ci}), CV² {f.cv2:.3g}; point-mass test p = {f.heterogeneity_pvalue:.3g}")
        out.posterior = pd.Series(posterior_strengths(f, values[finite]), index=data.index,
                                  name="posterior_beta")
        if by:
            profile_df = data.assign(posterior_beta=out.posterior)
            out.profiles = subgroup_table(profile_df, list(by), value="posterior_beta",
                                          n_boot=n_boot, seed=seed, cluster=cluster)
            g = out.profiles.groups.dropna(subset=["mean"]).sort_values("mean")
            if len(g) >= 2:
                lo, hi = g.iloc[0], g.iloc[-1]
                out.summary.append(
                    f"weakest preferences: {lo['attribute']}={lo['group']} (E[β|pair] "
                    f"{lo['mean']:.3g}); strongest: {hi['attribute']}={hi['group']} "
                    f"({hi['mean']:.3g})")
    for name, run in (runs or {}).items():
        verdict = trajectory_verdict(run)
        out.trajectories[name] = verdict
        out.summary.append(f"{name}: {verdict.explanation}")
    return out
