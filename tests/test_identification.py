"""``pluralign experiment identification`` (issue 22 item 5): the simulated populations, the
fits and the run folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, optimize, special, stats

from pluralign.cli import main
from pluralign.errors import ConfigError
from pluralign.experiments.identification import IdentificationConfig, fit, simulate

pytestmark = pytest.mark.usefixtures("one_thread")


def _scipy_per_pair_fit(margins: np.ndarray) -> float:
    """Per-pair Gamma MLE of CV² with g(x) = x by scipy quadrature + Nelder–Mead (independent)."""
    grid, counts = np.unique(margins, return_counts=True)

    def nll(theta):
        log_mean, log_cv2 = theta
        shape = math.exp(-log_cv2)
        scale = math.exp(log_mean) / shape
        total = 0.0
        for v, c in zip(grid, counts, strict=True):
            p, _ = integrate.quad(lambda b, v=v: special.expit(b * v)
                                  * stats.gamma.pdf(b, shape, scale=scale), 0, np.inf)
            total -= c * math.log(p)
        return total

    return math.exp(optimize.minimize(nll, [0.0, 0.0], method="Nelder-Mead",
                                      options={"xatol": 1e-4, "fatol": 1e-6}).x[1])


def test_one_scale_per_pair_fit_agrees_with_scipy():
    cfg = IdentificationConfig(n_annotators=60, pairs_per_annotator=5)
    margins, group = simulate("gamma_cv2_1", cfg, 0)
    margins = np.round(margins)  # the reference fits the same rounded margins
    ours = fit(margins, group, "one-scale", "per-pair", 0.5, cfg)["cv2"]
    assert ours == pytest.approx(_scipy_per_pair_fit(margins), rel=2e-2)


def test_panel_one_scale_fit_recovers_the_spread_of_a_large_population():
    cfg = IdentificationConfig(n_annotators=250, pairs_per_annotator=8)
    margins, group = simulate("gamma_cv2_0.5", cfg, 1)
    fits = [fit(margins, group, "one-scale", "panel", s, cfg)["cv2"] for s in (0.1, 2.0)]
    assert fits[0] == pytest.approx(fits[1], rel=1e-3)  # identified: both starts agree
    assert 0.3 < fits[0] < 0.8


def test_the_direction_population_has_constant_strength_and_disagreeing_types():
    cfg = IdentificationConfig(n_annotators=400, pairs_per_annotator=10)
    margins, group = simulate("direction", cfg, 0)
    assert margins.shape == group.shape == (4000,)
    # the model's margin is the types' average: its sd is margin_sd
    assert np.std(np.abs(margins)) == pytest.approx(np.std(np.abs(
        np.random.default_rng(0).normal(scale=2.0, size=100_000))), rel=0.1)


def test_a_small_run_writes_its_table(tmp_path):
    out = tmp_path / "ident"
    assert main(["experiment", "identification", "seeds=[0, 1]", "populations=[homogeneous]",
                 "n_annotators=15", "pairs_per_annotator=3", "max_iter=10",
                 "--output-dir", str(out)]) == 0
    table = pd.read_csv(out / "table.csv")
    assert len(table) == 4 and set(table["likelihood"]) == {"per-pair", "panel"}
    assert len(pd.read_csv(out / "fits.csv")) == 2 * 4 * 2  # seeds x cells x starts
    assert json.loads((out / "metrics.json").read_text())["summary"]


@pytest.mark.parametrize("field, value", [("populations", ["bimodal"]), ("seeds", []),
                                          ("direction_overlap", 1.0), ("starts", [0.0])])
def test_a_bad_setting_gets_one_line(field, value):
    with pytest.raises(ConfigError, match=field) as info:
        IdentificationConfig(**{field: value})
    assert "\n" not in str(info.value)
