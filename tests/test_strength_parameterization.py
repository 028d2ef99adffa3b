"""Strength-distribution coordinates (issue 12, defect 7): same family, different raw parameters."""

import math

import pytest
import torch
from scipy import stats

from pluralign.errors import ConfigError
from pluralign.strength import PARAMETERIZATIONS, Gamma, LogNormal, build_strength

MARGINS = torch.linspace(-5.0, 5.0, 11, dtype=torch.float64)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_every_parameterization_starts_from_the_requested_distribution(parameterization):
    g = Gamma(3.0, 4.0, parameterization=parameterization)
    ref = stats.gamma(3.0, scale=0.25)
    assert float(g.mean().detach()) == pytest.approx(ref.mean(), rel=1e-12)
    assert float(g.variance().detach()) == pytest.approx(ref.var(), rel=1e-12)
    ln = LogNormal(-1.0, 0.8, parameterization=parameterization)
    ref = stats.lognorm(0.8, scale=math.exp(-1.0))
    assert float(ln.mean().detach()) == pytest.approx(ref.mean(), rel=1e-12)
    assert float(ln.variance().detach()) == pytest.approx(ref.var(), rel=1e-12)
    assert ln.params() == pytest.approx({"mu": -1.0, "sigma": 0.8}, rel=1e-12)
    for dist, default in ((g, Gamma(3.0, 4.0)), (ln, LogNormal(-1.0, 0.8))):
        torch.testing.assert_close(dist.log_expected_sigmoid(MARGINS),
                                   default.log_expected_sigmoid(MARGINS), rtol=1e-12, atol=0)


def test_mean_cv2_coordinates_are_log_mean_and_log_cv2():
    g = Gamma(2.0, 16.7, parameterization="mean_cv2")
    names = dict(g.named_parameters())
    assert set(names) == {"log_mean", "log_cv2"}
    assert float(names["log_mean"]) == pytest.approx(math.log(2.0 / 16.7))
    assert float(names["log_cv2"]) == pytest.approx(math.log(0.5))
    ln = LogNormal(-2.3, 0.6, parameterization="mean_cv2")
    assert float(ln.log_cv2) == pytest.approx(math.log(math.expm1(0.36)))


@pytest.mark.parametrize("parameterization", ["log", "mean_cv2"])
def test_gradients_reach_the_new_coordinates(parameterization):
    for dist in (Gamma(parameterization=parameterization),
                 LogNormal(parameterization=parameterization)):
        dist.log_expected_sigmoid(MARGINS).sum().backward()
        grads = [p.grad for p in dist.parameters()]
        assert len(grads) == 2 and all(g is not None and torch.isfinite(g) for g in grads)


def test_build_strength_passes_the_parameterization_and_rejects_unknown_ones():
    assert build_strength("gamma", parameterization="log").parameterization == "log"
    with pytest.raises(ConfigError, match="parameterization"):
        Gamma(parameterization="sqrt")
    with pytest.raises(ConfigError, match="parameterization"):
        LogNormal(parameterization="logit")
