"""Panel strength fit (one β per annotator) and the item-0 inference fixes of issue 22."""

from __future__ import annotations

import dataclasses

import mp_reference as ref
import numpy as np
import pandas as pd
import pytest

from pluralign.cli import main
from pluralign.evaluation.diagnose import (
    compare_heterogeneity,
    diagnose,
    fit_verdict,
    verdict_explanation,
)
from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.strength_fit import fit_strength, log_likelihood, lognormal_num_points
from pluralign.evaluation.subgroup_strength import subgroup_strength

pytestmark = pytest.mark.usefixtures("one_thread")


def _panel(n_annotators: int, pairs: int, cv2: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Oriented true margins and annotator ids: Gamma β per annotator (mean 1), Δ ~ N(0, 2²)."""
    rng = np.random.default_rng(seed)
    beta = rng.gamma(1 / cv2, cv2, n_annotators)
    ids = np.repeat(np.arange(n_annotators), pairs)
    d = rng.normal(0, 2, ids.size)
    wins = rng.random(ids.size) < 1 / (1 + np.exp(-beta[ids] * d))
    return np.where(wins, d, -d), ids


def test_panel_log_likelihood_is_the_sum_of_mpmath_annotator_integrals():
    m = np.array([1.5, -0.3, 2.0, -4.0, 0.7, 0.01])
    ids = ["x", "x", "y", "y", "y", "z"]
    params = {"shape": 1.3, "rate": 0.9}
    exact = sum(float(ref.panel_log_likelihood(m[[i for i, a in enumerate(ids) if a == g]],
                                               "gamma", params)) for g in "xyz")
    assert log_likelihood(m, "gamma", params, groups=ids) == pytest.approx(exact, abs=1e-10)


def test_panel_fit_recovers_spread_and_beats_the_per_pair_likelihood():
    m, ids = _panel(50, 12, 1.0, seed=1)
    panel = fit_strength(m, "gamma", groups=ids, n_boot=0)
    per_pair = fit_strength(m, "gamma", n_boot=0)
    assert panel.likelihood == "panel" and panel.n_annotators == 50 and panel.n_single == 0
    assert 0.4 < panel.cv2 < 2.0 and np.isfinite(panel.cv2_se)
    assert panel.heterogeneity_pvalue < 1e-3  # the within-annotator dependence is plain
    assert panel.loglik > per_pair.loglik  # the true model (β shared) fits better
    assert panel.point_loglik == pytest.approx(per_pair.point_loglik, abs=1e-8)  # β fixed


def test_single_pair_annotators_are_noted_and_all_singles_are_unidentified():
    m, ids = _panel(60, 3, 0.5, seed=2)
    ids = ids.astype(object)
    ids[:2] = ["solo1", "solo2"]  # annotator 0 keeps one pair; two new single-pair annotators
    fit = fit_strength(m, "gamma", groups=ids, n_boot=0)
    assert fit.n_single == 3
    assert any("3 of 62 annotators have a single pair" in n for n in fit.notes)
    singles = fit_strength(m[:40], "gamma", groups=np.arange(40), n_boot=0)
    assert singles.identification["panel_uninformative"]
    assert fit_verdict(singles) == "unidentified"


@pytest.mark.parametrize("groups,message", [
    (["a", None, "b", "b"], "1 groups labels are missing"),
    (["a", "b"], "2 groups labels for 4 margins"),
])
def test_bad_groups_get_one_clear_error(groups, message):
    with pytest.raises(EvaluationError, match=message):
        fit_strength([1.0, -1.0, 0.5, -0.2], "gamma", groups=groups, n_boot=0)


def test_bootstrap_refits_start_cold_so_a_boundary_fit_gets_a_real_interval():
    # homogeneous population (seed 1): the MLE sits on the no-spread bound; warm-started refits
    # stayed there and gave CI [1e-5, 1e-5], i.e. a false "collapsed"
    rng = np.random.default_rng(1)
    d = rng.normal(0, 2, 1200)
    m = np.where(rng.random(1200) < 1 / (1 + np.exp(-d)), d, -d)
    fit = fit_strength(m, "gamma", n_boot=16, seed=0)
    assert "shape (upper)" in fit.identification["at_bound"]
    assert fit.cv2_ci[1] > 1e-3 > fit.cv2_ci[0]
    assert not any("collapsed" in note for note in fit.notes)


def test_verdict_needs_the_point_mass_test_and_its_sentence_agrees():
    m, _ = _panel(50, 12, 1.0, seed=1)
    fit = fit_strength(m, "gamma", n_boot=0)
    strong = dataclasses.replace(fit, cv2_ci=(0.3, 2.0), heterogeneity_pvalue=1e-6)
    weak = dataclasses.replace(strong, heterogeneity_pvalue=0.2)
    assert fit_verdict(strong) == "heterogeneous"
    assert fit_verdict(weak) == "inconclusive"
    assert "does not reject" in verdict_explanation(weak)
    for f in (strong, weak, fit):
        assert verdict_explanation(f).startswith(fit_verdict(f) + ":")


def test_lognormal_rule_is_exact_at_small_sigma_and_huge_negative_margins():
    for sigma in (0.05, 0.01):
        got = log_likelihood([-1e4], "lognormal", {"mu": 1.0, "sigma": sigma})
        exact = float(ref.panel_log_likelihood([-1e4], "lognormal", {"mu": 1.0, "sigma": sigma}))
        assert got == pytest.approx(exact, rel=1e-10)
    with pytest.raises(EvaluationError, match="adapts"):
        lognormal_num_points(0.01, 1.0, -1e4)


def test_diagnose_shows_both_fits_and_the_better_family():
    m, ids = _panel(40, 10, 1.0, seed=3)
    df = pd.DataFrame({"margin": m, "annotator_id": ids})
    d = diagnose(df, groups="annotator_id", n_boot=0)
    text = "\n".join(d.summary)
    assert "per-pair gamma strength" in text and "panel gamma strength (40 annotators" in text
    assert "fits better by likelihood" in text
    assert d.families["better"] in ("gamma", "lognormal")
    with pytest.raises(EvaluationError, match="groups"):
        diagnose(df, groups="user", n_boot=0)


def test_compare_heterogeneity_panel_reports_wald_and_refuses_mixed_inputs():
    a, ia = _panel(20, 8, 1.5, seed=4)
    b, ib = _panel(20, 8, 0.2, seed=5)
    cmp = compare_heterogeneity({"a": a, "b": b}, "gamma", n_boot=0, groups={"a": ia, "b": ib})
    assert all(f.likelihood == "panel" for f in cmp.fits.values())
    assert "cv2_wald_pvalue" in cmp.differences[0] and set(cmp.families) == {"a", "b"}
    with pytest.raises(EvaluationError, match="all or none"):
        compare_heterogeneity({"a": a, "b": b}, "gamma", n_boot=0, groups={"a": ia})


def test_cli_groups_column_missing_or_nan_margins_get_one_line(tmp_path, capsys):
    m, ids = _panel(30, 8, 1.0, seed=6)
    df = pd.DataFrame({"margin": m, "annotator_id": ids})
    df.loc[3, "margin"] = np.nan
    df.to_csv(tmp_path / "m.csv", index=False)
    assert main(["diagnose", f"margins={tmp_path / 'm.csv'}", "groups=annotator",
                 "--output-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no 'annotator' column" in err[0]
    assert main(["diagnose", f"margins={tmp_path / 'm.csv'}", "groups=annotator_id", "n_boot=0",
                 "--output-dir", str(tmp_path / "y")]) == 0
    out = capsys.readouterr().out
    assert "1 comparisons with NaN/inf margins excluded" in out and "panel gamma" in out
    assert main(["diagnose", f"margins={tmp_path / 'm.csv'}", "groups=annotator_id", "n_boot=0",
                 "power=true", "power_fit_sims=2", "--output-dir", str(tmp_path / "z")]) == 0
    assert "power at your fit: if β were distributed as the panel gamma fit" in (
        capsys.readouterr().out)


def test_subgroup_strength_panel_option_fits_each_group_by_annotator():
    a, ia = _panel(12, 4, 1.0, seed=7)
    b, ib = _panel(12, 4, 1.0, seed=8)
    df = pd.DataFrame({"margin": np.concatenate([a, b]), "team": ["u"] * a.size + ["v"] * b.size,
                       "annotator_id": [f"u{i}" for i in ia] + [f"v{i}" for i in ib]})
    sub = subgroup_strength(df, ["team"], groups="annotator_id", n_boot=20)
    assert all(f.likelihood == "panel" and f.n_annotators == 12 for f in sub.fits.values())
    assert sub.tests["team"]["test"] == "cluster-bootstrap Wald"
    with pytest.raises(EvaluationError, match="annotator"):
        subgroup_strength(df, ["team"], groups="annotator")
