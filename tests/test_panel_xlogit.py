"""Panel fit vs an independent panel mixed-logit estimator: xlogit's simulated ML with panels=."""

from __future__ import annotations

import numpy as np
import pytest

from pluralign.evaluation.strength_fit import fit_strength

pytestmark = pytest.mark.usefixtures("one_thread")

N_ANNOTATORS, PAIRS, MU, SIGMA = 150, 8, 0.2, 0.8


def _panel_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """LogNormal β per annotator (μ = 0.2, σ = 0.8), 8 pairs each, Δ ~ N(0, 2²), BT labels."""
    rng = np.random.default_rng(seed)
    beta = np.exp(MU + SIGMA * rng.standard_normal(N_ANNOTATORS))
    ids = np.repeat(np.arange(N_ANNOTATORS), PAIRS)
    d = rng.normal(0, 2, ids.size)
    wins = rng.random(ids.size) < 1 / (1 + np.exp(-beta[ids] * d))
    return np.where(wins, d, -d), ids


def xlogit_panel_fit(m: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(μ, σ) and their standard errors from ``xlogit.MixedLogit(..., panels=annotator)`` with a
    lognormal coefficient on the margin: chosen has attribute Δ, rejected 0."""
    xlogit = pytest.importorskip("xlogit")
    n = m.size
    model = xlogit.MixedLogit()
    model.fit(X=np.stack([m, np.zeros(n)], 1).reshape(-1, 1), y=np.tile([1, 0], n),
              varnames=["margin"], alts=np.tile([1, 2], n), ids=np.repeat(np.arange(n), 2),
              panels=np.repeat(ids, 2), randvars={"margin": "ln"}, n_draws=1000,
              random_state=0, verbose=0, optim_method="L-BFGS-B")
    coef = np.array([float(model.coeff_[0]), abs(float(model.coeff_[1]))])
    return coef, np.asarray(model.stderr, dtype=float)[:2]


def test_panel_fit_agrees_with_xlogit_panel_mixed_logit_within_one_standard_error():
    m, ids = _panel_data()
    coef, se = xlogit_panel_fit(m, ids)
    fit = fit_strength(m, "lognormal", groups=ids, n_boot=0)
    ours = np.array([fit.params["mu"], fit.params["sigma"]])
    print(f"pluralign panel (mu, sigma) = {ours}, xlogit = {coef} ± {se}")
    assert np.all(np.abs(ours - coef) <= se)
    # both recover the truth within 2 standard errors (the fit is right, not only consistent)
    assert np.all(np.abs(ours - [MU, SIGMA]) <= 2 * se)
