"""Power of the CV² diagnostic (issue 12): the test's size, its power, and its standard errors."""

import numpy as np
import pytest

from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.power import _simulate, power_at_fit, separation_power
from pluralign.evaluation.strength_fit import fit_strength

pytestmark = pytest.mark.usefixtures("one_thread")


def test_equal_populations_are_separated_about_five_percent_of_the_time():
    r = separation_power(3000, 0.5, 0.5, n_sims=60, seed=3)
    assert r.power <= 0.15 and r.power_ci[0] <= 0.05 <= r.power_ci[1]


def test_a_large_gap_is_found_and_more_data_helps():
    small = separation_power(500, 2.0, 0.5, n_sims=30, seed=4)
    large = separation_power(8000, 2.0, 0.5, n_sims=30, seed=4)
    assert large.power >= 0.9 and large.power > small.power


def test_sandwich_standard_error_matches_the_spread_over_replications():
    """The CV² standard error of one fit vs the SD of fitted CV² over 40 independent populations
    (10 pairs per annotator, so the annotator-level sandwich matters)."""
    rng = np.random.default_rng(5)
    grid = np.linspace(-8, 8, 201)
    probs = np.exp(-0.5 * (grid / 2) ** 2)
    probs /= probs.sum()
    cv2, ses = [], []
    for _ in range(40):
        m, clusters = _simulate(4000, 10, 0.5, 1.0, grid, probs, rng)
        fit = fit_strength(m, "gamma", n_boot=0, clusters=clusters)
        cv2.append(fit.cv2)
        ses.append(fit.cv2_se)
    assert np.median(ses) == pytest.approx(np.std(cv2, ddof=1), rel=0.35)


def test_panel_standard_error_matches_the_spread_over_replications():
    """Same check for the panel fit (one β per annotator, 10 pairs each), whose standard error
    is smaller than the per-pair fit's on the same data."""
    rng = np.random.default_rng(6)
    grid = np.linspace(-8, 8, 201)
    probs = np.exp(-0.5 * (grid / 2) ** 2)
    probs /= probs.sum()
    cv2, ses, per_pair = [], [], []
    for _ in range(15):
        m, annotators = _simulate(800, 10, 0.5, 1.0, grid, probs, rng)
        fit = fit_strength(m, "gamma", n_boot=0, groups=annotators)
        cv2.append(fit.cv2)
        ses.append(fit.cv2_se)
        per_pair.append(fit_strength(m, "gamma", n_boot=0, clusters=annotators).cv2_se)
    assert np.nanmedian(ses) == pytest.approx(np.std(cv2, ddof=1), rel=0.4)
    assert np.nanmedian(ses) < np.nanmedian(per_pair)


def test_power_at_fit_detects_spread_at_the_fitted_distribution():
    rng = np.random.default_rng(7)
    grid = np.linspace(-8, 8, 201)
    probs = np.exp(-0.5 * (grid / 2) ** 2)
    probs /= probs.sum()
    m, annotators = _simulate(600, 20, 1.0, 1.0, grid, probs, rng)
    fit = fit_strength(m, "gamma", n_boot=0, groups=annotators)
    power = power_at_fit(m, fit, groups=annotators, n_sims=8, seed=1)
    assert power.likelihood == "panel" and power.n_annotators == 30
    assert power.power >= 0.75  # CV² ≈ 1 with 20 pairs per annotator is plain to see
    with pytest.raises(EvaluationError, match="groups"):
        power_at_fit(m, fit)


def test_bad_arguments_are_refused():
    with pytest.raises(EvaluationError, match="n_pairs"):
        separation_power(5, 0.5, 0.5)
    with pytest.raises(EvaluationError, match="CV²"):
        separation_power(100, -0.1, 0.5)
    with pytest.raises(EvaluationError, match="likelihood"):
        separation_power(100, 0.5, 0.5, likelihood="pairs")
