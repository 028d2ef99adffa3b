"""Preference-strength heterogeneity diagnostic ([VARIANCE-CLAIM]; [MixDPO, §5.3; Fig. 4]).

Four views of how strongly, and how differently, a population expresses its preferences:

a) :func:`trajectory_verdict` reads a MixDPO run's logged ``beta_var`` and ``beta_mean``
   trajectory and says whether the learned distribution collapsed toward a point mass;
b) :func:`pluralign.evaluation.strength_fit.fit_strength` fits the distribution on fixed margins,
   with no language-model training;
c) :func:`posterior_strengths` gives each comparison's posterior mean strength
   ``E[β | chosen ≻ rejected, Δ] = E_β[β σ(βΔ)] / E_β[σ(βΔ)]`` under the fitted distribution (a
   function of Δ alone, so it is not a per-group measure), and
   :func:`pluralign.evaluation.subgroup_strength.subgroup_strength` fits the distribution on each
   subgroup's margins and tests whether the groups share one;
d) :func:`compare_heterogeneity` fits several datasets and ranks them by the scale-free
   CV² = Var β / (E β)² (variances are reported too), with bootstrap intervals on each value and
   each pairwise difference.

Every verdict is judged on CV², because β multiplies the margin and its units are those of the
margin: β and Δ enter only as a product, so during MixDPO training the learned mean drifts as the
policy's margins grow, and a variance can shrink just because the mean does. A collapse needs CV²
below :data:`COLLAPSE_CV2` (for a fit: the upper end of its bootstrap interval too).
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
from pluralign.evaluation.strength_fit import (
    FAMILIES,
    StrengthFit,
    cv2_difference_test,
    fit_strength,
)
from pluralign.evaluation.subgroup_strength import SubgroupStrength, subgroup_strength
from pluralign.panel import log_lognormal_panel_likelihood

#: A distribution with CV² = Var β / (E β)² below this is called collapsed (sd < 22% of the mean).
COLLAPSE_CV2 = 0.05
#: A trajectory whose CV² (or variance, when no mean is logged) still moves by more than this
#: (relative) over its last quarter is flagged as not converged.
DRIFT_TOLERANCE = 0.10


@dataclass
class TrajectoryVerdict:
    """Summary of a learned strength distribution's CV² (and variance) over training steps."""

    steps: list[float]
    variance: list[float]
    mean: list[float] | None
    initial_variance: float
    final_variance: float
    final_cv2: float | None
    verdict: str  # "collapsed" | "heterogeneous" | "undetermined" (no beta_mean logged)
    converged: bool
    explanation: str
    initial_cv2: float | None = None

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


def _relative_drift(values: Sequence[float]) -> float:
    """Range over the last quarter of ``values`` relative to the last value."""
    quarter = values[int(len(values) * 0.75):] if len(values) >= 4 else values
    return (max(quarter) - min(quarter)) / max(abs(values[-1]), 1e-300)


def trajectory_verdict(run: str | os.PathLike[str] | Sequence[Mapping[str, Any]],
                       key: str = "beta_var", mean_key: str = "beta_mean") -> TrajectoryVerdict:
    """Verdict on a run's logged strength trajectory (view a), judged on CV² = var / mean².

    ``collapsed`` when the final CV² is below :data:`COLLAPSE_CV2`, ``heterogeneous`` otherwise,
    ``undetermined`` when the log has no ``mean_key`` (a variance alone says nothing about
    spread: it scales with the mean², which drifts because β and Δ enter only as a product).
    """
    history = load_log_history(run)
    rows = [h for h in history if key in h and h[key] is not None]
    if not rows:
        raise EvaluationError(f"the run's log history has no {key!r} entries; the diagnostic "
                              "needs a MixDPO run with a learnable strength distribution")
    steps = [float(h.get("step", i)) for i, h in enumerate(rows)]
    var = [float(h[key]) for h in rows]
    means = ([float(h[mean_key]) for h in rows]
             if all(h.get(mean_key) is not None for h in rows) else None)
    if not np.all(np.isfinite(var)) or (means and not np.all(np.isfinite(means))):
        bad = [s for s, v in zip(steps, var, strict=True) if not np.isfinite(v)]
        raise EvaluationError(f"non-finite {key!r} or {mean_key!r} values in the log history "
                              f"(steps {bad or 'see ' + mean_key})")
    cv2 = ([v / m**2 for v, m in zip(var, means, strict=True)]
           if means and all(m > 0 for m in means) else None)
    if cv2 is None:
        verdict = "undetermined"
        text = (f"no {mean_key!r} logged: the variance {var[0]:.3g} → {var[-1]:.3g} cannot be "
                "judged without the mean (collapse is judged on CV² = var / mean²)")
        drift = _relative_drift(var)
    else:
        drift = _relative_drift(cv2)
        if cv2[-1] < COLLAPSE_CV2:
            verdict = "collapsed"
            text = (f"collapsed toward a point mass: CV² {cv2[0]:.3g} → {cv2[-1]:.3g} "
                    f"< {COLLAPSE_CV2}")
        else:
            verdict = "heterogeneous"
            text = (f"retains spread: CV² {cv2[0]:.3g} → {cv2[-1]:.3g} (variance {var[0]:.3g} → "
                    f"{var[-1]:.3g}, mean {means[0]:.3g} → {means[-1]:.3g})")
    converged = drift <= DRIFT_TOLERANCE
    if not converged:
        text += f"; still moving ({drift:.0%} over the last quarter of logged steps)"
    return TrajectoryVerdict(steps=steps, variance=var, mean=means, initial_variance=var[0],
                             final_variance=var[-1], final_cv2=None if cv2 is None else cv2[-1],
                             verdict=verdict, converged=converged, explanation=text,
                             initial_cv2=None if cv2 is None else cv2[0])


def fit_verdict(fit: StrengthFit, alpha: float = 0.05) -> str:
    """Verdict on a fitted CV² (see :func:`verdict_explanation` for the sentence).

    * ``unidentified``: the fit raised an identification flag (the spread parameter on its
      no-spread bound is not one: that is a small spread, judged below);
    * ``collapsed``: CV² and the upper end of its (cold-start bootstrap) interval are below
      :data:`COLLAPSE_CV2`;
    * ``heterogeneous``: the boundary-aware likelihood-ratio test rejects a point mass at level
      ``alpha`` (½χ²₀ + ½χ²₁, :attr:`StrengthFit.heterogeneity_pvalue`) and the interval's lower
      end is at least :data:`COLLAPSE_CV2`;
    * else ``inconclusive``.
    """
    ident = fit.identification
    no_spread = {"sigma (lower)", "shape (upper)"}
    if (ident.get("not_moved") or ident.get("scale_unidentified")
            or ident.get("panel_uninformative") or set(ident.get("at_bound", [])) - no_spread):
        return "unidentified"
    high = fit.cv2_ci[1] if fit.cv2_ci else None
    low = fit.cv2_ci[0] if fit.cv2_ci else None
    if fit.cv2 < COLLAPSE_CV2 and high is not None and high < COLLAPSE_CV2:
        return "collapsed"
    if low is not None and low >= COLLAPSE_CV2 and fit.heterogeneity_pvalue < alpha:
        return "heterogeneous"
    return "inconclusive"


def verdict_explanation(fit: StrengthFit, alpha: float = 0.05) -> str:
    """One sentence saying why :func:`fit_verdict` says what it says (never contradicting it)."""
    verdict = fit_verdict(fit, alpha)
    ci = _ci_text(fit.cv2_ci)
    p = f"point-mass test p = {fit.heterogeneity_pvalue:.3g}"
    if verdict == "unidentified":
        return "unidentified: the fit raised an identification flag (see its notes)"
    if verdict == "collapsed":
        return (f"collapsed: CV² {fit.cv2:.3g} and its interval {ci} are below {COLLAPSE_CV2} "
                f"({p})")
    if verdict == "heterogeneous":
        return (f"heterogeneous: the {p} rejects one β for all and the CV² interval {ci} lies "
                f"above {COLLAPSE_CV2}")
    if fit.cv2_ci is None:
        return f"inconclusive: no bootstrap interval (n_boot=0); {p}"
    reasons = []
    if fit.cv2_ci[0] < COLLAPSE_CV2 <= fit.cv2_ci[1]:
        reasons.append(f"the CV² interval {ci} reaches both sides of {COLLAPSE_CV2}")
    if fit.heterogeneity_pvalue >= alpha:
        reasons.append(f"the {p} does not reject one β for all at {alpha:g}")
    if not reasons:  # CV² above the threshold but the interval below it, or the reverse
        reasons.append(f"CV² {fit.cv2:.3g} and its interval {ci} fall on different sides of "
                       f"{COLLAPSE_CV2}")
    return "inconclusive: " + " and ".join(reasons)


def posterior_strengths(fit: StrengthFit, margins: Sequence[float] | np.ndarray) -> np.ndarray:
    """Per-comparison ``E[β | chosen ≻ rejected, Δ]`` under the fitted distribution (view c).

    A LogNormal posterior is ``E[β]·E_{μ+σ²}[σ(βΔ)] / E_μ[σ(βΔ)]`` (exponential tilting), both
    expectations from the adaptive rule of :mod:`pluralign.panel` (one pair per group), exact
    for any margin and σ.
    """
    m = torch.as_tensor(np.asarray(margins, dtype=float), dtype=torch.float64)
    with torch.no_grad():
        if fit.family == "lognormal" and m.numel():
            mu, sigma = fit.params["mu"], fit.params["sigma"]
            one_each = torch.arange(m.numel())
            tilted = log_lognormal_panel_likelihood(m, one_each, mu + sigma**2, sigma)
            base = log_lognormal_panel_likelihood(m, one_each, mu, sigma)
            return np.exp(mu + sigma**2 / 2 + (tilted - base).numpy())
        return fit.distribution().posterior_mean(m).double().numpy()


def family_comparison(margins: Sequence[float] | np.ndarray, fit: StrengthFit,
                      groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """Fit the other family on the same margins (no bootstrap) and name the better-fitting one
    by maximised log-likelihood. CV² values are compared only within one family: a LogNormal
    fitted to Gamma data gives CV² 0.76 and 13.2 for true 0.5 and 2 (issue 22)."""
    other = next(f for f in FAMILIES if f != fit.family)
    alt = fit_strength(margins, other, groups=groups, n_boot=0)
    lls = {fit.family: fit.loglik, other: alt.loglik}
    better = max(lls, key=lls.__getitem__)
    return {"loglik": lls, "cv2": {fit.family: fit.cv2, other: alt.cv2}, "better": better,
            "loglik_gap": abs(fit.loglik - alt.loglik)}


@dataclass
class HeterogeneityComparison:
    """Fits of several datasets and pairwise differences of their variance and CV²."""

    fits: dict[str, StrengthFit]
    ranking: list[str]  # by fitted CV², largest first
    differences: list[dict[str, Any]] = field(default_factory=list)
    #: dataset -> :func:`family_comparison` (the better-fitting family by likelihood)
    families: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"fits": {k: v.to_dict() for k, v in self.fits.items()}, "ranking": self.ranking,
                "differences": self.differences, "families": self.families}


def compare_heterogeneity(margins: Mapping[str, Sequence[float] | np.ndarray],
                          family: str = "gamma", *, n_boot: int = 200, level: float = 0.95,
                          clusters: Mapping[str, Sequence[Any]] | None = None,
                          groups: Mapping[str, Sequence[Any]] | None = None,
                          seed: int = 0) -> HeterogeneityComparison:
    """Fit each dataset's strength distribution and rank them by CV² (view d).

    All datasets are fitted with one ``family`` (CV² is compared only within a family); each
    dataset's entry in ``families`` names the family that fits it better by likelihood. With
    ``groups`` (dataset -> annotator id per margin) every fit is the panel likelihood (one β
    per annotator, annotator bootstrap); a dataset missing from ``groups`` is an error, since
    per-pair and panel CV² are not comparable. Differences ``Var_a − Var_b`` (and of CV²) get
    percentile intervals from the two independent bootstraps (draw ``j`` of one minus draw ``j``
    of the other); the CV² difference also gets the sandwich Wald test
    (:func:`~pluralign.evaluation.strength_fit.cv2_difference_test`), the test whose power
    :func:`~pluralign.evaluation.power.separation_power` simulates.
    """
    if len(margins) < 2:
        raise EvaluationError("compare_heterogeneity needs at least two datasets")
    if groups is not None and set(groups) != set(margins):
        raise EvaluationError(f"compare_heterogeneity: groups given for {sorted(groups)} but "
                              f"datasets are {sorted(margins)}; give annotator ids for all or "
                              "none (panel and per-pair CV² are not comparable)")
    fits = {name: fit_strength(m, family, n_boot=n_boot, level=level, seed=seed + i,
                               clusters=(clusters or {}).get(name),
                               groups=None if groups is None else groups[name])
            for i, (name, m) in enumerate(margins.items())}
    families = {name: family_comparison(m, fits[name],
                                        None if groups is None else groups[name])
                for name, m in margins.items()}
    ranking = sorted(fits, key=lambda k: fits[k].cv2, reverse=True)
    diffs = []
    for i, a in enumerate(ranking):
        for b in ranking[i + 1:]:
            fa, fb = fits[a], fits[b]
            entry: dict[str, Any] = {"a": a, "b": b, "variance_diff": fa.variance - fb.variance,
                                     "cv2_diff": fa.cv2 - fb.cv2}
            test = cv2_difference_test(fa, fb)
            for key in ("z", "pvalue"):  # None where a fit is on a bound (JSON has no NaN)
                entry[f"cv2_wald_{key}"] = test[key] if np.isfinite(test[key]) else None
            if fa.samples is not None and fb.samples is not None:
                k = min(len(fa.samples), len(fb.samples))
                sa, sb = fa.samples[:k], fb.samples[:k]
                entry["variance_diff_ci"] = list(percentile_interval(sa[:, 1] - sb[:, 1], level))
                entry["cv2_diff_ci"] = list(percentile_interval(
                    sa[:, 1] / sa[:, 0] ** 2 - sb[:, 1] / sb[:, 0] ** 2, level))
            diffs.append(entry)
    return HeterogeneityComparison(fits=fits, ranking=ranking, differences=diffs,
                                   families=families)


@dataclass
class Diagnosis:
    """Everything :func:`diagnose` found; ``summary`` has one line per finding."""

    fit: StrengthFit | None = None
    #: the panel fit (one β per annotator) when ``groups`` was given
    panel: StrengthFit | None = None
    #: :func:`family_comparison` of the main fit (panel when present)
    families: dict[str, Any] | None = None
    posterior: pd.Series | None = None
    subgroups: SubgroupStrength | None = None
    trajectories: dict[str, TrajectoryVerdict] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fit": self.fit.to_dict() if self.fit else None,
            "fit_verdict": fit_verdict(self.fit) if self.fit else None,
            "panel": self.panel.to_dict() if self.panel else None,
            "panel_verdict": fit_verdict(self.panel) if self.panel else None,
            "families": self.families,
            "posterior_beta": (None if self.posterior is None else
                               {"mean": float(self.posterior.mean()),
                                "quantiles": {str(q): float(self.posterior.quantile(q))
                                              for q in (0.05, 0.25, 0.5, 0.75, 0.95)}}),
            "subgroups": self.subgroups.to_dict() if self.subgroups else None,
            "trajectories": {k: v.to_dict() for k, v in self.trajectories.items()},
            "summary": self.summary,
        }


def _ci_text(ci: tuple[float, float] | None) -> str:
    return f"[{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "n/a"


#: One sentence on what each fit identifies (printed beside its result).
PER_PAIR_SENTENCE = ("per-pair fit (a fresh β for every comparison): CV² is identified only if the "
                     "margins are the true ones — with a model's margins any spread can be "
                     "absorbed into a transform of Δ")
PANEL_SENTENCE = ("panel fit (one β per annotator): CV² is identified by how an annotator's "
                  "labels agree with each other beyond what the margins predict, which no "
                  "transform of Δ can produce")


def fit_summary(fit: StrengthFit) -> str:
    """One line: the fit's estimates, intervals, point-mass test and verdict with its reason."""
    kind = "panel" if fit.likelihood == "panel" else "per-pair"
    who = (f" ({fit.n_annotators} annotators, {fit.n_single} with one pair)"
           if fit.likelihood == "panel" else "")
    return (f"{kind} {fit.family} strength{who}: mean {fit.mean:.3g}, variance "
            f"{fit.variance:.3g} (95% CI {_ci_text(fit.variance_ci)}), CV² {fit.cv2:.3g} (95% CI "
            f"{_ci_text(fit.cv2_ci)}); verdict: {verdict_explanation(fit)}")


def diagnose(
    df: pd.DataFrame | None = None,
    *,
    margin: str = "margin",
    family: str = "gamma",
    by: Sequence[str] = (),
    runs: Mapping[str, str | os.PathLike[str] | Sequence[Mapping[str, Any]]] | None = None,
    cluster: str | None = None,
    groups: str | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> Diagnosis:
    """Heterogeneity report from fixed margins and/or training runs' strength trajectories.

    Args:
        df: one row per comparison with a ``margin`` column (and attribute columns for ``by``).
        margin: the margin column (``"margin"``, or a synthetic population's ``"true_margin"``).
        family: strength family to fit, ``"gamma"`` or ``"lognormal"`` (the other family is
            fitted too, without bootstrap, to name the better-fitting one by likelihood).
        by: attribute columns for per-subgroup strength fits and their equality tests
            (:func:`~pluralign.evaluation.subgroup_strength.subgroup_strength`).
        runs: name -> run folder / log history of MixDPO runs, for trajectory verdicts.
        cluster: column whose values share one β (e.g. ``"annotator_id"``) for the bootstrap.
        groups: annotator-id column: adds the panel fit (one β per annotator, annotator
            bootstrap) beside the per-pair one; subgroup fits then use the panel likelihood.
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
        if groups is not None:
            require_column(df.columns, groups, "groups (annotator id) column")
        values = pd.to_numeric(df[margin], errors="coerce").to_numpy(dtype=float)
        finite = np.isfinite(values)
        if not finite.any():
            raise EvaluationError(f"column {margin!r}: no finite margins (all {len(values)} are "
                                  "NaN, infinite or not numbers)")
        if not finite.all():
            out.summary.append(f"{int((~finite).sum())} comparisons with NaN/inf margins excluded")
        data = df.loc[finite].assign(**{margin: values[finite]})
        if groups is not None and data[groups].isna().any():
            bad = np.flatnonzero(data[groups].isna().to_numpy())
            raise EvaluationError(f"groups column {groups!r}: {bad.size} rows have no annotator "
                                  f"id (first rows {bad[:5].tolist()}); drop or fill them")
        out.fit = f = fit_strength(values[finite], family, n_boot=n_boot, seed=seed,
                                   clusters=None if cluster is None else data[cluster].tolist())
        out.summary.append(fit_summary(f) + f" — {PER_PAIR_SENTENCE}")
        out.summary.extend(f"per-pair fit note: {note}" for note in f.notes)
        main = f
        if groups is not None:
            ids = data[groups].tolist()
            out.panel = main = fit_strength(values[finite], family, groups=ids, n_boot=n_boot,
                                            seed=seed)
            out.summary.append(fit_summary(main) + f" — {PANEL_SENTENCE}")
            out.summary.extend(f"panel fit note: {note}" for note in main.notes)
        out.families = family_comparison(values[finite], main,
                                         None if groups is None else data[groups].tolist())
        fam = out.families
        out.summary.append(
            f"{fam['better']} fits better by likelihood (gap {fam['loglik_gap']:.3g}); CV² "
            f"{', '.join(f'{k} {v:.3g}' for k, v in fam['cv2'].items())} — compare CV² only "
            "within one family")
        out.posterior = pd.Series(posterior_strengths(f, values[finite]), index=data.index,
                                  name="posterior_beta")
        if by:
            out.subgroups = subgroup_strength(data, list(by), margin=margin, family=family,
                                              cluster=cluster, groups=groups, n_boot=n_boot,
                                              seed=seed)
            out.summary.extend(out.subgroups.summary())
    for name, run in (runs or {}).items():
        verdict = trajectory_verdict(run)
        out.trajectories[name] = verdict
        out.summary.append(f"{name}: {verdict.explanation}")
    return out
