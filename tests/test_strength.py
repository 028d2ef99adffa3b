"""Strength distributions: paper defaults, positivity, moments, posteriors, sampling, errors."""

from __future__ import annotations

import math

import mp_reference as ref
import numpy as np
import pytest
import torch
from scipy import stats

from pluralign.errors import ConfigError
from pluralign.strength import STRENGTHS, Gamma, LogNormal, PointMass, build_strength

F64 = torch.float64


def test_paper_defaults_are_exact():
    assert PointMass().params() == {"beta": 0.1}
    ln = LogNormal().params()
    assert ln["mu"] == -2.3 and ln["sigma"] == pytest.approx(0.6, rel=1e-15)
    g = Gamma().params()
    assert g["shape"] == pytest.approx(2.0, rel=1e-15)
    assert g["rate"] == pytest.approx(16.7, rel=1e-15)
    assert not PointMass().learnable and LogNormal().learnable and Gamma().learnable


@pytest.mark.parametrize("family", sorted(STRENGTHS))
def test_learnable_flag_decides_parameters_vs_buffers(family):
    learnable = build_strength(family, learnable=True)
    frozen = build_strength(family, learnable=False)
    assert len(list(learnable.parameters())) >= 1
    assert len(list(frozen.parameters())) == 0
    assert set(learnable.params()) == set(frozen.params())


@pytest.mark.parametrize("cls", [LogNormal, Gamma])
def test_positivity_by_construction_after_wild_updates(cls):
    dist = cls()
    with torch.no_grad():
        for name, p in dist.named_parameters():
            if name != "mu":
                p.sub_(40.0)  # far below zero in raw space
    assert all(v > 0 for k, v in dist.params().items() if k != "mu")
    assert torch.isfinite(dist.log_expected_sigmoid(torch.tensor([-3.0, 2.0]))).all()
    with torch.no_grad():
        for name, p in dist.named_parameters():
            if name != "mu":
                p.fill_(-1e4)  # softplus underflows to 0 in float64
    if cls is LogNormal:  # σ = 0 is a valid point mass at e^μ
        d = torch.tensor([-3.0, 2.0], dtype=F64)
        expected = torch.nn.functional.logsigmoid(math.exp(-2.3) * d)
        assert torch.allclose(dist.log_expected_sigmoid(d), expected, rtol=1e-12)
    else:  # k = 0 or λ = 0 is no distribution: an error naming the value, never a NaN
        with pytest.raises(ValueError, match="must be > 0, got 0.0"):
            dist.log_expected_sigmoid(torch.tensor([-3.0, 2.0]))


def test_moments_match_scipy():
    g = Gamma(shape=3.5, rate=7.0)
    dist = stats.gamma(3.5, scale=1 / 7.0)
    assert g.mean().item() == pytest.approx(dist.mean(), rel=1e-13)
    assert g.variance().item() == pytest.approx(dist.var(), rel=1e-13)
    ln = LogNormal(mu=-1.2, sigma=0.7)
    dist = stats.lognorm(0.7, scale=math.exp(-1.2))
    assert ln.mean().item() == pytest.approx(dist.mean(), rel=1e-13)
    assert ln.variance().item() == pytest.approx(dist.var(), rel=1e-12)
    pm = PointMass(0.25)
    assert pm.mean().item() == 0.25 and pm.variance().item() == 0.0


@pytest.mark.parametrize("margin", [-6.0, -0.4, 0.0, 0.9, 12.0])
def test_gamma_posterior_mean_matches_direct_quadrature(margin):
    g = Gamma(shape=1.7, rate=5.0)
    got = g.posterior_mean(torch.tensor([margin], dtype=F64)).item()
    exact = ref.gamma_posterior_mean(margin, 1.7, 5.0)
    assert got == pytest.approx(float(exact), rel=1e-11)


@pytest.mark.parametrize("margin", [-6.0, -0.4, 0.9, 12.0])
def test_lognormal_posterior_mean_matches_direct_quadrature(margin):
    ln = LogNormal(mu=-1.0, sigma=0.8, num_points=32)
    got = ln.posterior_mean(torch.tensor([margin], dtype=F64)).item()
    exact = ref.lognormal_posterior_mean(margin, -1.0, 0.8)
    assert got == pytest.approx(float(exact), rel=1e-6)


def test_posterior_mean_moves_towards_evidence():
    # A pair won by a large margin says little; one won "against" the margin says β is small.
    g = Gamma()
    post = g.posterior_mean(torch.tensor([-20.0, 0.0, 20.0], dtype=F64))
    assert post[0] < g.mean() and post[2] > post[0]
    assert post[1].item() == pytest.approx(g.mean().item(), rel=1e-12)  # Δ = 0: no evidence
    assert PointMass(0.3).posterior_mean(torch.zeros(4)).tolist() == [0.3] * 4


@pytest.mark.parametrize(
    ("dist", "scipy_dist"),
    [
        (Gamma(shape=2.0, rate=16.7), stats.gamma(2.0, scale=1 / 16.7)),
        (LogNormal(mu=-2.3, sigma=0.6), stats.lognorm(0.6, scale=math.exp(-2.3))),
    ],
)
def test_samples_follow_the_distribution(dist, scipy_dist):
    gen = torch.Generator().manual_seed(7)
    draws = dist.sample(4000, generator=gen).detach().numpy()
    assert draws.shape == (4000,) and (draws > 0).all()
    assert stats.kstest(draws, scipy_dist.cdf).pvalue > 1e-3
    again = dist.sample(4000, generator=torch.Generator().manual_seed(7)).detach().numpy()
    np.testing.assert_array_equal(draws, again)


def test_point_mass_samples_are_beta():
    assert torch.equal(PointMass(0.2).sample(3), torch.full((3,), 0.2, dtype=F64))


def test_expected_sigmoid_agrees_with_log_version():
    d = torch.linspace(-30, 30, 13, dtype=F64)
    for dist in (PointMass(0.1), LogNormal(), Gamma()):
        np.testing.assert_allclose(
            dist.expected_sigmoid(d).detach(),
            dist.log_expected_sigmoid(d).exp().detach(),
            rtol=1e-13,
        )


def test_gradients_reach_raw_parameters():
    for dist in (LogNormal(), Gamma(), PointMass(learnable=True)):
        dist.log_expected_sigmoid(torch.tensor([-1.0, 0.5, 3.0])).sum().backward()
        for p in dist.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_readable_repr():
    assert repr(Gamma()) == "Gamma(shape=2, rate=16.7, learnable=True)"
    assert repr(PointMass()) == "PointMass(beta=0.1, learnable=False)"
    assert "method='quadrature', num_points=16" in repr(LogNormal())


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Gamma(shape=0.0), "shape must be finite and > 0, got 0.0"),
        (lambda: Gamma(shape=-2.0), "shape must be finite and > 0, got -2.0"),
        (lambda: Gamma(rate=0.0), "rate must be finite and > 0, got 0.0"),
        (lambda: Gamma(rate=float("nan")), "rate must be finite and > 0, got nan"),
        (lambda: LogNormal(sigma=-0.5), "sigma must be finite and > 0, got -0.5"),
        (lambda: LogNormal(mu=float("inf")), "mu must be finite"),
        (lambda: LogNormal(method="sobol"), "sobol"),
        (lambda: LogNormal(num_points=0), "num_points"),
        (lambda: PointMass(beta=-0.1), "beta must be finite and > 0, got -0.1"),
        (lambda: build_strength("weibull"), "gamma, lognormal, point"),
        (lambda: build_strength("gamma", scale=3.0), "unknown parameter"),
    ],
)
def test_invalid_parameters_raise_naming_the_value(build, message):
    with pytest.raises(ConfigError, match=message) as info:
        build()
    assert isinstance(info.value, ValueError)


def test_nan_margin_raises_naming_the_value():
    for dist in (PointMass(), LogNormal(), Gamma()):
        with pytest.raises(ValueError, match="margin must be finite, got nan"):
            dist.log_expected_sigmoid(torch.tensor([0.3, float("nan")]))
