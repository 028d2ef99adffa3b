"""Issue 12: what the heterogeneity diagnostic concludes (defects 1–6 and identification flags).

Every expected value comes from an independent source: the Gamma/LogNormal moments in closed
form, 25-digit mpmath quadrature (tests/mp_reference.py), or the construction of the data.
"""

import math
import re
from pathlib import Path

import mpmath as mp
import numpy as np
import pandas as pd
import pytest
import torch

from pluralign.evaluation.diagnose import (
    compare_heterogeneity,
    diagnose,
    fit_verdict,
    posterior_strengths,
    trajectory_verdict,
)
from pluralign.evaluation.strength_fit import (
    SIGMA_MAX,
    fit_strength,
    log_likelihood,
)
from pluralign.strength import Gamma, LogNormal

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


def _mp_lognormal_moment(margin, mu, sigma, power):
    """``E[β^power σ(βΔ)]`` for β = exp(μ + σε) by 20-digit quadrature over the whole real line,
    split at the peak of ``φ(ε)e^{power·σε}`` (ε = power·σ) and at the sigmoid's transition."""
    with mp.workdps(20):
        d, m, s = mp.mpf(margin), mp.mpf(mu), mp.mpf(sigma)

        def f(e):
            b = mp.exp(m + s * e)
            return mp.npdf(e) * b**power / (1 + mp.exp(-d * b))

        centre = -(m + mp.log(abs(d))) / s
        cuts = ({power * s + k for k in range(-8, 9, 2)}
                | {centre + k / s for k in (-3, -1, 0, 1, 3)})
        cuts = sorted(c for c in cuts if -40 < c < 40)  # φ(40) = e^{-800}: nothing beyond
        return mp.quad(f, [-40, *cuts, 40])


def mp_lognormal(margin, mu, sigma):
    return _mp_lognormal_moment(margin, mu, sigma, 0)


def mp_lognormal_posterior(margin, mu, sigma):
    return _mp_lognormal_moment(margin, mu, sigma, 1) / _mp_lognormal_moment(margin, mu, sigma, 0)


def _labelled(beta, rng, scale=2.0):
    """Margins oriented chosen-minus-rejected, labels drawn from σ(βΔ)."""
    delta = rng.normal(0.0, scale, size=beta.size)
    chosen_is_a = rng.random(beta.size) < 1 / (1 + np.exp(-beta * delta))
    return np.where(chosen_is_a, delta, -delta)


# ------------------------------------------------------------------ defect 1: CV², not variance


def test_constant_cv2_with_drifting_mean_is_not_a_collapse():
    """Gamma k = 2 throughout (CV² = 1/k = 0.5) while E[β] drifts 0.12 → 0.05 (β·Δ product)."""
    means = np.linspace(0.12, 0.05, 20)
    history = [{"step": 10 * (i + 1), "beta_mean": m, "beta_var": m * m / 2.0}
               for i, m in enumerate(means)]
    v = trajectory_verdict(history)
    assert v.final_cv2 == pytest.approx(0.5)
    assert v.verdict == "heterogeneous", v.explanation


def test_trajectory_without_mean_gives_no_collapse_verdict():
    history = [{"step": i, "beta_var": v} for i, v in enumerate(np.geomspace(1e-2, 1e-4, 10))]
    v = trajectory_verdict(history)
    assert v.verdict == "undetermined" and "beta_mean" in v.explanation


def test_datasets_are_ranked_by_cv2_not_variance():
    """B has the larger variance (its margins are 5× smaller, so β is 5× larger) but the smaller
    CV² (Gamma k = 10: 0.1 vs k = 2: 0.5)."""
    rng = np.random.default_rng(3)
    n = 6000
    a = _labelled(rng.gamma(2.0, 0.5, n), rng)
    b = _labelled(5.0 * rng.gamma(10.0, 0.1, n), rng, scale=0.4)
    cmp = compare_heterogeneity({"a": a, "b": b}, "gamma", n_boot=0)
    assert cmp.fits["b"].variance > cmp.fits["a"].variance
    assert cmp.ranking == ["a", "b"]


# ------------------------------------------------------------------ defect 2: accurate posteriors


@pytest.mark.parametrize("sigma", [0.05, 0.6, 1.5, 2.5, 4.0, SIGMA_MAX])
def test_posterior_strengths_and_likelihood_match_mpmath_over_the_sigma_range(sigma):
    mu = -1.0
    margins = np.array([-20.0, -3.0, -0.2, -1e-3, 1e-3, 0.5, 4.0, 30.0])
    fit = fit_strength(_labelled(np.exp(mu + 0.5 * np.random.default_rng(0)
                                         .standard_normal(400)), np.random.default_rng(1)),
                       "lognormal", n_boot=0)
    fit.params = {"mu": mu, "sigma": sigma}
    got = posterior_strengths(fit, margins)
    want = np.array([float(mp_lognormal_posterior(d, mu, sigma)) for d in margins])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    ll = log_likelihood(margins, "lognormal", {"mu": mu, "sigma": sigma})
    want_ll = sum(float(mp.log(mp_lognormal(d, mu, sigma))) for d in margins)
    assert ll == pytest.approx(want_ll, rel=1e-6, abs=1e-9)


# ------------------------------------------------------------------ defect 3: subgroup strength


def test_subgroups_with_one_strength_distribution_are_not_ranked():
    """Same β ~ Gamma(2, 2) in both groups, but group 'wide' has 4× larger margins: posterior means
    E[β | pair] differ (they depend on Δ only), the fitted distributions must not."""
    rng = np.random.default_rng(7)
    n = 6000
    group = np.repeat(["wide", "narrow"], n // 2)
    beta = rng.gamma(2.0, 0.5, n)
    delta = np.where(group == "wide", 4.0, 1.0) * rng.normal(0.0, 1.0, n)
    wins = rng.random(n) < 1 / (1 + np.exp(-beta * delta))
    df = pd.DataFrame({"margin": np.where(wins, delta, -delta), "attr.group": group})
    d = diagnose(df, by=["attr.group"], family="gamma", n_boot=10)
    assert not any("weakest" in s or "strongest" in s for s in d.summary), d.summary
    test = d.subgroups.tests["attr.group"]
    assert test["pvalue"] > 0.01
    table = d.subgroups.table.set_index("group")
    for g in ("wide", "narrow"):
        assert table.loc[g, "mean"] == pytest.approx(1.0, rel=0.2)


def test_subgroups_with_different_strengths_are_separated():
    rng = np.random.default_rng(8)
    n = 6000
    group = np.repeat(["strong", "weak"], n // 2)
    beta = np.where(group == "strong", 3.0, 0.3) * rng.gamma(5.0, 0.2, n)
    df = pd.DataFrame({"margin": _labelled(beta, rng), "attr.group": group,
                       "annotator_id": [f"u{i // 3}" for i in range(n)]})
    d = diagnose(df, by=["attr.group"], family="gamma", n_boot=20, cluster="annotator_id")
    table = d.subgroups.table.set_index("group")
    assert table.loc["strong", "mean_ci_low"] > table.loc["weak", "mean_ci_high"]
    assert d.subgroups.tests["attr.group"]["pvalue"] < 1e-3
    assert any("strong" in s for s in d.summary)


# ------------------------------------------------------------------ defect 4: identification


def test_outliers_no_longer_push_lognormal_sigma_to_its_bound():
    """Before: two ±1e4 outliers gave σ = 10 (the bound), E[β] = 1.7e20 — an artefact of the
    48-node rule, whose error at σ = 10 made that corner look best (reported loglik −1095.6; its
    accurate value is −1103.8). The accurate likelihood has its maximum well inside the box."""
    rng = np.random.default_rng(0)
    m = np.concatenate([_labelled(rng.gamma(2.0, 0.5, 2000), rng), [1e4, -1e4]])
    fit = fit_strength(m, "lognormal", n_boot=0)
    assert fit.params["sigma"] < 3.0 and not fit.identification["at_bound"]
    corner = log_likelihood(m, "lognormal", {"mu": 1.3724307370810966, "sigma": SIGMA_MAX})
    assert fit.loglik > corner + 10
    assert fit.loglik == pytest.approx(log_likelihood(m, "lognormal", fit.params), abs=1e-6)


@pytest.mark.parametrize("family,name", [("lognormal", "sigma (lower)"),
                                         ("gamma", "shape (upper)")])
def test_a_parameter_on_its_bound_is_flagged(family, name):
    """Labels steeper in |Δ| than any logistic (60% agree at |Δ| = 0.5, 300 of 301 at 3): a
    mixture of logistics is flatter than one, so the best fit has no spread — the box's edge."""
    m = np.array([0.5] * 60 + [-0.5] * 40 + [3.0] * 300 + [-3.0])
    fit = fit_strength(m, family, n_boot=0)
    assert fit.identification["at_bound"] == [name]
    assert any("bound" in note for note in fit.notes) and not fit.identified
    assert fit_verdict(fit) != "unidentified"  # no spread at all is the collapse, not a failure


def test_cv2_is_invariant_to_the_margin_scale():
    """β and Δ enter only as β·Δ: rescaling the margins by c rescales β by 1/c, CV² is unchanged."""
    rng = np.random.default_rng(1)
    m = _labelled(rng.gamma(2.0, 0.5, 4000), rng)
    for family in ("gamma", "lognormal"):
        base = fit_strength(m, family, n_boot=0)
        tiny = fit_strength(m * 1e-9, family, n_boot=0)
        assert tiny.cv2 == pytest.approx(base.cv2, rel=1e-3)
        assert tiny.mean == pytest.approx(base.mean * 1e9, rel=1e-3)
        assert not tiny.identification["at_bound"]


def test_nearly_deterministic_labels_flag_the_scale_as_unidentified():
    rng = np.random.default_rng(2)
    m = np.concatenate([rng.uniform(0.5, 3.0, 3000), [-0.01, -0.02, -0.015]])
    fit = fit_strength(m, "gamma", n_boot=0)
    assert fit.identification["scale_unidentified"]
    assert any("scale" in note for note in fit.notes)


def test_a_fit_that_stays_at_its_start_is_flagged():
    """Symmetric margins with labels at chance: the likelihood is flat in the spread only at a
    point mass near β = 0; whatever the optimiser returns, 'not moved' must be honest."""
    m = np.array([1.0, -1.0] * 50)
    fit = fit_strength(m, "gamma", n_boot=0)
    assert isinstance(fit.identification["not_moved"], bool)
    assert fit.identification["scale_unidentified"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_any_float_dtype_and_requires_grad_tensors_are_accepted(dtype):
    rng = np.random.default_rng(3)
    t = torch.tensor(_labelled(rng.gamma(2.0, 0.5, 1500), rng), dtype=dtype, requires_grad=True)
    fit = fit_strength(t, "gamma", n_boot=0)
    ref = fit_strength(t.detach().double().numpy(), "gamma", n_boot=0)
    assert fit.cv2 == pytest.approx(ref.cv2, rel=1e-9)


# ------------------------------------------------------------------ defect 6: stale text

_DOCS = ["README.md", "pluralign/evaluation/strength_fit.py", "pluralign/evaluation/diagnose.py",
         "pluralign/strength.py", "pluralign/training/config.py", "pluralign/objectives/mixdpo.py",
         *[f"configs/{p.name}" for p in sorted((ROOT / "configs").glob("*.yaml"))]]


def test_docs_name_the_trapezoidal_rule_and_the_true_initial_mean():
    """The LogNormal rule is a trapezoidal rule; "Gauss–Hermite" may appear only as the rule it
    is compared with. Every "E[β] ≈ x" claim matches both paper inits (0.120 and 0.1198)."""
    init_means = [float(LogNormal().mean().detach()), float(Gamma().mean().detach())]
    for name in _DOCS:
        text = (ROOT / name).read_text(encoding="utf-8")
        for line in text.splitlines():
            if re.search(r"Gauss.Hermite", line):
                assert re.search(r"vs|than|limits|gives|Gauss.Hermite:", line), f"{name}: {line}"
        for claim in re.findall(r"E\[(?:β|beta)\] (?:≈|=) ([0-9.]*[0-9])", text):
            for mean in init_means:
                assert float(claim) == pytest.approx(mean, abs=0.005), f"{name}: {claim}"


def test_strength_fit_says_which_rule_it_uses():
    text = (ROOT / "pluralign/evaluation/strength_fit.py").read_text(encoding="utf-8")
    assert "Gauss–Hermite nodes" not in text and "trapezoid" in text


def test_the_mp_reference_against_closed_forms():
    """E σ(β·0⁺) → ½, and for Δ → +∞ the posterior mean tends to E β = exp(μ + σ²/2)."""
    assert float(mp_lognormal(1e-30, 0.3, 1.0)) == pytest.approx(0.5, abs=1e-15)
    assert float(mp_lognormal_posterior(1e12, -1.0, 4.0)) == pytest.approx(math.exp(7.0),
                                                                          rel=1e-9)
