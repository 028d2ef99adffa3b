"""Heterogeneity diagnostic: strength fits against independent references and known truth.

Stated tolerances (synthetic populations with one comparison per annotator, so each pair has its
own β, n = 50,000 pairs, fixed seeds): the fitted mean is within 5% and the variance within 35%
of the true distribution's. The variance is identified only through the curvature of
P(chosen | Δ) (see strength_fit's docstring), so it is the noisier of the two; 35% is about two
standard errors at this n.
"""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import integrate, optimize, special

from pluralign.data.synthetic import PopulationConfig, make_population
from pluralign.evaluation.diagnose import (
    COLLAPSE_CV2,
    compare_heterogeneity,
    diagnose,
    posterior_strengths,
    trajectory_verdict,
)
from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.strength_fit import fit_strength

N_PAIRS = 50_000


pytestmark = pytest.mark.usefixtures("one_thread")


def _true_margins(seed=0, n=N_PAIRS, **strength):
    pop = make_population(PopulationConfig(n_annotators=n, pairs_per_annotator=1, seed=seed,
                                           **strength))
    return np.asarray(pop.dataset["true_margin"])


def _simulate(beta, rng, scale=2.0):
    delta = rng.normal(0.0, scale, size=beta.size)
    chosen_is_a = rng.random(beta.size) < 1 / (1 + np.exp(-beta * delta))
    return np.where(chosen_is_a, delta, -delta)


# ----------------------------------------------------------- agreement with other estimators


def test_lognormal_fit_agrees_with_xlogit_mixed_logit():
    """Binary choice as two alternatives: chosen has attribute Δ, rejected 0; random 'ln' coef."""
    xlogit = pytest.importorskip("xlogit")
    rng = np.random.default_rng(0)
    n = 1500
    m = _simulate(np.exp(0.2 + 0.8 * rng.standard_normal(n)), rng)
    fit = fit_strength(m, "lognormal", n_boot=0)
    model = xlogit.MixedLogit()
    model.fit(X=np.stack([m, np.zeros(n)], 1).reshape(-1, 1), y=np.tile([1, 0], n),
              varnames=["margin"], alts=np.tile([1, 2], n), ids=np.repeat(np.arange(n), 2),
              randvars={"margin": "ln"}, n_draws=600, random_state=0, verbose=0,
              optim_method="L-BFGS-B")  # its default BFGS stops early on this problem
    mu_x, sigma_x = float(model.coeff_[0]), abs(float(model.coeff_[1]))
    assert fit.params["mu"] == pytest.approx(mu_x, abs=0.03)
    assert fit.params["sigma"] == pytest.approx(sigma_x, abs=0.03)
    # our exact (quadrature) likelihood at xlogit's simulated-ML estimate is no better than ours
    from pluralign.numerics import log_lognormal_expected_sigmoid
    at_x = float(log_lognormal_expected_sigmoid(torch.tensor(m, dtype=torch.float64), mu_x,
                                                sigma_x, num_points=64).sum())
    assert at_x <= fit.loglik + 1e-6
    assert fit.loglik - at_x < 1.0


def test_gamma_fit_matches_generalised_laguerre_reference():
    """Independent likelihood: E_β f(β) = Σ_i w_i f(t_i/λ) / Γ(k) with Gauss–Laguerre(k−1) nodes."""
    rng = np.random.default_rng(1)
    m = _simulate(rng.gamma(1.5, 1 / 1.2, size=3000), rng)

    def negll(log_params):
        k, lam = np.exp(log_params)
        t, w = special.roots_genlaguerre(120, k - 1)
        beta = t / lam
        p = (w[None, :] * special.expit(np.outer(m, beta))).sum(1) / special.gamma(k)
        return -np.log(p).sum()

    ref = optimize.minimize(negll, np.log([1.0, 1.0]), method="Nelder-Mead",
                            options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 4000})
    fit = fit_strength(m, "gamma", n_boot=0)
    k_ref, lam_ref = np.exp(ref.x)
    assert fit.params["shape"] == pytest.approx(k_ref, rel=0.02)
    assert fit.params["rate"] == pytest.approx(lam_ref, rel=0.02)
    assert fit.loglik == pytest.approx(-ref.fun, abs=1e-3)


def test_posterior_strength_matches_quadrature():
    rng = np.random.default_rng(2)
    fit = fit_strength(_simulate(rng.gamma(2.0, 0.5, size=2000), rng), "gamma", n_boot=0)
    k, lam = fit.params["shape"], fit.params["rate"]
    def moment(power, delta):  # ∫ β^power σ(βΔ) p(β) dβ up to the normalisation, which cancels
        return integrate.quad(lambda b: b ** (power + k - 1) * math.exp(-lam * b)
                              * special.expit(b * delta), 0, np.inf)[0]

    for delta in (-3.0, -0.2, 0.0, 0.7, 4.0):
        num, den = moment(1, delta), moment(0, delta)
        assert posterior_strengths(fit, [delta])[0] == pytest.approx(num / den, rel=1e-6)


# ----------------------------------------------------------- recovery on synthetic populations


@pytest.mark.parametrize("family,params,mean,var", [
    ("gamma", {"shape": 2.0, "rate": 2.0}, 1.0, 0.5),
    ("lognormal", {"mu": 0.0, "sigma": 0.6}, math.exp(0.18), (math.exp(0.36) - 1) * math.exp(0.36)),
])
def test_fit_recovers_true_strength_distribution(family, params, mean, var):
    fit = fit_strength(_true_margins(seed=2, strength=family, **params), family, n_boot=0)
    assert fit.mean == pytest.approx(mean, rel=0.05)
    assert fit.variance == pytest.approx(var, rel=0.35)
    assert fit.heterogeneity_pvalue < 1e-6


def test_three_populations_are_ordered_and_homogeneous_control_collapses():
    margins = {f"shape={k}": _true_margins(seed=5, n=20_000, strength="gamma", shape=k, rate=k)
               for k in (0.7, 2.0, 30.0)}
    cmp = compare_heterogeneity(margins, "gamma", n_boot=8)
    assert cmp.ranking == ["shape=0.7", "shape=2.0", "shape=30.0"]
    top = [d for d in cmp.differences if d["a"] == "shape=0.7" and d["b"] == "shape=30.0"][0]
    assert top["variance_diff_ci"][0] > 0
    json.dumps(cmp.to_dict())

    control = _true_margins(seed=5, strength="gamma", shape=2.0, rate=2.0, homogeneous=True)
    fit = fit_strength(control, "gamma", n_boot=0)
    hetero = fit_strength(_true_margins(seed=5, strength="gamma", shape=2.0, rate=2.0), "gamma",
                          n_boot=0)
    assert fit.mean == pytest.approx(1.0, rel=0.05)
    assert fit.cv2 < 0.1 < 0.3 < hetero.cv2  # truth: 0 vs 0.5
    assert fit.heterogeneity_pvalue > 0.01


def test_cluster_bootstrap_widens_intervals_when_annotators_share_beta():
    """β is drawn per annotator (10 comparisons each): resampling annotators is the honest unit."""
    pop = make_population(PopulationConfig(n_annotators=300, pairs_per_annotator=10,
                                           strength="gamma", shape=2.0, rate=2.0, seed=4))
    df = pop.dataset.to_pandas()
    pairs = fit_strength(df.true_margin, "gamma", n_boot=20, seed=1)
    clustered = fit_strength(df.true_margin, "gamma", n_boot=20, seed=1,
                             clusters=df.annotator_id.tolist())
    for fit in (pairs, clustered):
        assert fit.mean_ci[0] < fit.mean < fit.mean_ci[1]
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(clustered.mean_ci) > width(pairs.mean_ci)


# ----------------------------------------------------------- error paths


def test_one_signed_margins_are_refused_with_an_explanation():
    with pytest.raises(EvaluationError, match="not identified"):
        fit_strength(np.abs(np.random.default_rng(0).normal(size=100)) + 0.1)
    with pytest.raises(EvaluationError, match="NaN or infinite"):
        fit_strength([1.0, -1.0, np.nan])
    with pytest.raises(EvaluationError, match="family"):
        fit_strength([1.0, -1.0], "weibull")


# ----------------------------------------------------------- trajectories and the full report


def _history(variances, means=None):
    return [{"step": 10 * (i + 1), "loss": 0.6, "beta_var": v,
             **({"beta_mean": means[i]} if means else {})} for i, v in enumerate(variances)]


def test_trajectory_verdicts(tmp_path):
    decay = _history(list(np.geomspace(0.007, 0.0002, 20)), [0.12] * 20)
    v = trajectory_verdict(decay)
    assert v.verdict == "collapsed" and v.final_cv2 < COLLAPSE_CV2
    flat = _history([0.007] * 19 + [0.0071], [0.12] * 20)
    v = trajectory_verdict(flat)
    assert v.verdict == "heterogeneous" and v.converged
    growing = _history(list(np.linspace(0.007, 0.02, 20)), [0.12] * 20)
    assert not trajectory_verdict(growing).converged
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": decay}))
    assert trajectory_verdict(tmp_path).verdict == "collapsed"
    with pytest.raises(EvaluationError, match="no 'beta_var'"):
        trajectory_verdict([{"step": 1, "loss": 0.5}])
    with pytest.raises(EvaluationError, match="trainer_state.json"):
        trajectory_verdict(tmp_path / "missing")


def test_diagnose_profiles_subgroup_strength(tmp_path):
    rng = np.random.default_rng(4)
    n = 4000
    group = rng.choice(["strong", "weak"], size=n)
    beta = np.where(group == "strong", 3.0, 0.3) * rng.gamma(5.0, 0.2, size=n)
    df = pd.DataFrame({"margin": _simulate(beta, rng), "attr.group": group})
    df.loc[0, "margin"] = np.nan
    (tmp_path / "trainer_state.json").write_text(json.dumps(
        {"log_history": _history([0.007] * 10, [0.1] * 10)}))
    d = diagnose(df, by=["attr.group"], family="gamma", n_boot=10, runs={"run": tmp_path})
    prof = d.subgroups.table.set_index("group")
    # per-group fits: E[β] is 3.0 vs 0.3 by construction
    assert prof.loc["strong", "mean_ci_low"] > prof.loc["weak", "mean_ci_high"]
    assert prof.loc["strong", "mean"] == pytest.approx(3.0, rel=0.25)
    assert len(d.posterior) == n - 1
    assert d.trajectories["run"].verdict == "heterogeneous"
    assert any("excluded" in s for s in d.summary)
    json.dumps(d.to_dict())


def test_diagnose_names_a_missing_cluster_column():
    """Issue 15 #9: diagnose(..., cluster='nope') (CLI --cluster) raised a bare KeyError: 'nope'."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"margin": rng.normal(1, 1, 40), "annotator_id": rng.choice(list("xyz"), 40)})
    with pytest.raises(EvaluationError, match=r"cluster column 'nope' not found; available: "
                                              r"\['annotator_id', 'margin'\]"):
        diagnose(df, cluster="nope", n_boot=5)


# ------------------------------------------------------- `pluralign diagnose` (issue 12 wiring)
def _labelled(rng, beta, n):
    """Oriented margins (chosen − rejected) on a 0.1 grid: few distinct values, fast fits."""
    delta = np.round(rng.normal(0, 2, n), 1)
    win = rng.random(n) < 1 / (1 + np.exp(-beta * delta))
    return np.where(win, delta, -delta)


def test_cli_diagnose_shows_verdict_subgroup_fits_and_identification_notes(tmp_path, capsys):
    from pluralign.cli import main

    rng = np.random.default_rng(1)
    n = 1200
    group = rng.choice(["u", "v"], n)
    beta = np.where(group == "u", 0.3, 3.0)  # the groups' labels follow the margin unequally
    pd.DataFrame({"margin": _labelled(rng, beta, n), "attr.g": group}).to_csv(
        tmp_path / "m.csv", index=False)
    out = tmp_path / "diag"
    assert main(["diagnose", f"margins={tmp_path / 'm.csv'}", "by=[attr.g]", "n_boot=5",
                 "--output-dir", str(out)]) == 0
    text = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    verdict = metrics["diagnosis"]["fit_verdict"]
    assert verdict in ("collapsed", "heterogeneous", "inconclusive", "unidentified")
    assert f"verdict: {verdict}" in text
    sub = metrics["diagnosis"]["subgroups"]
    assert {r["group"] for r in sub["table"]} == {"u", "v"}
    assert sub["tests"]["attr.g"]["pvalue"] < 0.01
    assert "strength by attr.g" in text and "groups differ — strongest attr.g=v" in text
    assert pd.read_csv(out / "subgroup_strength.csv")["group"].tolist() == ["u", "v"]
    report = (out / "report.html").read_text()
    assert f"verdict: {verdict}" in report and "strength by attr.g" in report

    # nearly deterministic labels: the scale of β is not identified; the CLI and report say so
    small = pd.DataFrame({"margin": np.concatenate([rng.uniform(0.5, 3.0, 3000),
                                                    [-0.01, -0.02, -0.015]])})
    small.to_csv(tmp_path / "s.csv", index=False)
    assert main(["diagnose", f"margins={tmp_path / 's.csv'}", "n_boot=0",
                 "--output-dir", str(tmp_path / "small")]) == 0
    text = capsys.readouterr().out
    metrics = json.loads((tmp_path / "small" / "metrics.json").read_text())
    notes = metrics["diagnosis"]["fit"]["notes"]
    assert metrics["diagnosis"]["fit_verdict"] == "unidentified" and notes
    assert all(f"fit note: {note}" in text for note in notes)
    assert "fit note: " in (tmp_path / "small" / "report.html").read_text()


def test_cli_diagnose_compare_is_labelled_and_ranked_by_cv2(tmp_path, capsys):
    """Dataset 'wide' has the larger CV² (1/0.5 = 2) but the smaller variance (0.5 vs 4 for
    'narrow', CV² 0.25): ranked by CV² it comes first, by variance it would not."""
    from pluralign.cli import main

    rng = np.random.default_rng(2)
    n = 4000
    for name, k, mean in (("wide", 0.5, 0.5), ("narrow", 4.0, 4.0)):
        pd.DataFrame({"margin": _labelled(rng, rng.gamma(k, mean / k, n), n)}).to_csv(
            tmp_path / f"{name}.csv", index=False)
    out = tmp_path / "cmp"
    assert main(["diagnose", f"compare.narrow={tmp_path / 'narrow.csv'}",
                 f"compare.wide={tmp_path / 'wide.csv'}", "n_boot=0",
                 "--output-dir", str(out)]) == 0
    text = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    fits = metrics["comparison"]["fits"]
    assert fits["wide"]["variance"] < fits["narrow"]["variance"]
    assert metrics["diagnostics"]["ranking by CV²"] == "wide > narrow"
    assert "ranking by CV²: wide > narrow" in text and "Var[β]" not in text


def test_cli_diagnose_power(tmp_path, capsys):
    from pluralign.cli import main

    out = tmp_path / "power"
    assert main(["diagnose", "power_pairs=[200, 400]", "power_cv2_a=2", "power_cv2_b=0",
                 "power_pairs_per_annotator=5", "power_sims=3", "--output-dir", str(out)]) == 0
    text = capsys.readouterr().out
    power = json.loads((out / "metrics.json").read_text())["power"]
    assert [p["n_pairs"] for p in power] == [200, 400]
    assert all(p["n_sims"] == 3 and p["pairs_per_annotator"] == 5 and p["cv2_a"] == 2
               and 0 <= p["power_ci"][0] <= p["power"] <= p["power_ci"][1] <= 1 for p in power)
    assert "power at 400 pairs: separates CV² 2 from 0 at 95% in" in text
    assert main(["diagnose", "power_pairs=200", "power_sims=1", "--output-dir",
                 str(tmp_path / "one")]) == 0  # a single number is one power estimate
    capsys.readouterr()
    for bad, message in (("power_pairs=[lots]", "whole numbers of pairs"),
                         ("power_pairs=5", "n_pairs >= 10")):
        assert main(["diagnose", bad, "--output-dir", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err
