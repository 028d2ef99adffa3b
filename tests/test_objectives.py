"""DPO / MixDPO losses and objective objects: exactness, stability, metrics, factory."""

from __future__ import annotations

import dataclasses
import math

import mp_reference as ref
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pluralign.errors import ConfigError
from pluralign.objectives import (
    OBJECTIVES,
    STRENGTH_FACTORIES,
    DPOObjective,
    MixDPOObjective,
    MixDPOSettings,
    build_objective,
    dpo_loss,
    mixdpo_loss,
    resolve_objective,
)
from pluralign.strength import STRENGTHS as FAMILIES
from pluralign.strength import Gamma, LogNormal, PointMass

F64 = torch.float64


def test_dpo_loss_is_minus_log_sigmoid():
    d = torch.tensor([-3.0, 0.0, 2.0], dtype=F64)
    expected = [math.log1p(math.exp(-0.1 * v)) for v in d.tolist()]
    assert dpo_loss(d, 0.1).tolist() == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_mixdpo_with_point_mass_equals_dpo_exactly(dtype, beta):
    d = (torch.randn(257, generator=torch.Generator().manual_seed(0)) * 30).to(dtype)
    assert torch.equal(mixdpo_loss(d, PointMass(beta)), dpo_loss(d, beta))
    assert torch.equal(MixDPOObjective(PointMass(beta))(d), DPOObjective(beta)(d))


def test_mixdpo_gamma_loss_matches_mpmath():
    for d in (-4.0, -0.01, 0.001, 3.0):
        exact = -ref.gamma_expected_sigmoid(d, 2.0, 16.7)[1]
        got = mixdpo_loss(torch.tensor([d], dtype=F64), Gamma()).item()
        assert got == pytest.approx(float(exact), rel=1e-12)
    # The example: at Δ = 0.001, E = 0.50003 and the loss 0.69309 (1000 terms: 0.056).
    assert mixdpo_loss(torch.tensor([0.001]), Gamma()).item() == pytest.approx(0.69309, abs=1e-5)


STRENGTHS = [
    PointMass(0.1),
    LogNormal(),
    LogNormal(method="monte_carlo"),
    Gamma(),
    Gamma(shape=50.0, rate=0.01),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("strength", STRENGTHS, ids=repr)
def test_loss_and_gradients_finite_for_margins_up_to_1e4(strength, dtype):
    d = torch.tensor([-1e4, -300.0, -1.0, 0.0, 1e-6, 5.0, 1e4], dtype=dtype, requires_grad=True)
    loss = mixdpo_loss(d, strength)
    assert loss.dtype == (F64 if dtype == F64 else torch.float32)
    assert torch.isfinite(loss).all() and (loss >= 0).all()
    loss.sum().backward()
    assert torch.isfinite(d.grad).all()
    for p in strength.parameters():
        assert torch.isfinite(p.grad).all()
        p.grad = None
    assert loss[0] > loss[3] > loss[-1]  # the loss falls as the margin grows


def test_mixdpo_objective_metrics_and_parameters():
    objective = build_objective("mixdpo", strength="gamma", strength_shape=3.0, strength_rate=10.0)
    assert isinstance(objective, MixDPOObjective)
    assert {n for n, _ in objective.named_parameters()} == {
        "strength.raw_shape",
        "strength.raw_rate",
    }
    metrics = objective.metrics()
    assert metrics["beta_mean"] == pytest.approx(0.3, rel=1e-14)
    assert metrics["beta_var"] == pytest.approx(0.03, rel=1e-14)
    assert metrics["strength/shape"] == pytest.approx(3.0, rel=1e-14)
    assert metrics["strength/rate"] == pytest.approx(10.0, rel=1e-14)
    assert all(isinstance(v, float) for v in metrics.values())
    ln = build_objective("mixdpo", strength="lognormal", learnable_strength=False).metrics()
    assert set(ln) == {"beta_mean", "beta_var", "strength/mu", "strength/sigma"}
    assert DPOObjective(0.2).metrics() == {"beta_mean": 0.2, "beta_var": 0.0}


def test_learnable_strength_moves_towards_the_data():
    # Margins with many "surprising" losses (Δ < 0 won) are explained by a smaller mean β.
    torch.manual_seed(0)
    objective = build_objective("mixdpo", strength="gamma")
    start = objective.metrics()["beta_mean"]
    opt = torch.optim.Adam(objective.parameters(), lr=0.05)
    d = torch.cat([torch.full((50,), 20.0), torch.full((50,), -20.0)])
    for _ in range(15):
        opt.zero_grad()
        objective(d).mean().backward()
        opt.step()
    assert objective.metrics()["beta_mean"] < start


def test_build_objective_defaults_and_names():
    assert isinstance(build_objective("dpo"), DPOObjective)
    assert build_objective("dpo", beta=0.3).beta == 0.3
    point = build_objective("mixdpo")
    assert isinstance(point.strength, PointMass) and point.strength.params() == {"beta": 0.1}
    ln = build_objective("mixdpo", strength="lognormal", lognormal_method="monte_carlo",
                         lognormal_num_points=8)
    assert ln.strength.method == "monte_carlo" and ln.strength.num_points == 8
    assert ln.strength.learnable
    assert {"dpo", "mixdpo"} <= set(OBJECTIVES)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "ppo"}, "objective='ppo' is unknown; use one of .*dpo.*mixdpo"),
        ({"name": "dpo", "strength": "gamma"}, "fixed beta"),
        ({"name": "dpo", "beta": -1.0}, "beta=-1.0 is invalid; use a finite number > 0"),
        ({"name": "mixdpo", "strength": "gamma", "strength_shape": 0.0},
         "strength_shape=0.0 is invalid; use a finite number > 0"),
        ({"name": "mixdpo", "strength": "cauchy"}, "strength='cauchy' is unknown"),
    ],
)
def test_build_objective_rejects_bad_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_objective(**kwargs)


def test_nan_margin_raises():
    for objective in (DPOObjective(0.1), build_objective("mixdpo", strength="gamma")):
        with pytest.raises(ValueError, match="margin must be finite, got nan"):
            objective(torch.tensor([1.0, float("nan")]))


@pytest.mark.parametrize("beta", [-0.1, 0.0, math.inf, math.nan, "0.1", True])
def test_dpo_loss_rejects_a_bad_beta(beta):
    """Issue 15 #10: dpo_loss(m, -0.1) used to return a loss that rewards the rejected answer."""
    with pytest.raises(ConfigError, match=r"dpo_loss: beta=.* is invalid; use a finite number > 0"):
        dpo_loss(torch.zeros(3), beta)


def test_dpo_loss_rejects_a_tensor_beta_with_a_bad_entry():
    with pytest.raises(ConfigError, match="dpo_loss: beta"):
        dpo_loss(torch.zeros(2), torch.tensor([0.1, -0.1]))
    assert dpo_loss(torch.zeros(2), torch.tensor([0.1, 0.2])).shape == (2,)


@pytest.mark.parametrize("strength", [0.1, "gamma", None])
def test_mixdpo_loss_needs_a_strength_distribution(strength):
    """Issue 15 #9: mixdpo_loss(m, 0.1) used to raise AttributeError: 'float' object has no
    attribute 'log_expected_sigmoid'."""
    with pytest.raises(ConfigError, match=r"mixdpo_loss needs a StrengthDistribution .* got "
                                          r".*; for a fixed beta use dpo_loss"):
        mixdpo_loss(torch.zeros(3), strength)


_CANDIDATES = [None, 0, -1, 1, 3, 0.5, 16.0, -2.3, math.nan, math.inf, "x", True, False]


@st.composite
def _objective_and_settings(draw):
    name = draw(st.sampled_from(sorted(OBJECTIVES)))
    values = {}
    for f in dataclasses.fields(OBJECTIVES[name].Settings):
        if draw(st.booleans()):
            values[f.name] = draw(st.sampled_from([*_CANDIDATES, *(f.metadata["choices"] or ())]))
    return name, values


@given(_objective_and_settings())
@settings(max_examples=400, deadline=None)
def test_settings_that_pass_the_checks_always_build(choice):
    """PreferenceConfig.validate checks settings without building the objective; anything a
    constructor refuses must therefore be refused by the checks first."""
    name, values = choice
    try:
        spec = resolve_objective(name, **values)
    except ConfigError:
        return
    assert isinstance(spec.build(), OBJECTIVES[name])


_ALTERED = {"beta": 0.3, "learnable_strength": False, "strength_mu": -1.0, "strength_sigma": 0.9,
            "lognormal_method": "monte_carlo", "lognormal_num_points": 8, "strength_shape": 3.0,
            "strength_rate": 5.0, "strength_parameterization": "log",
            "strength_unit": "annotator", "annotator_by": "worker"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_strength_factory_builds_its_family_from_exactly_the_settings_it_names(family):
    factory = STRENGTH_FACTORIES[family]
    settings_ = MixDPOSettings(strength=family)
    built = factory.build(settings_)
    assert type(built) is FAMILIES[family]
    assert MixDPOObjective.used(settings_) == {"strength", "strength_unit", *factory.used()}
    for name in (f.name for f in dataclasses.fields(MixDPOSettings)):
        if name == "strength":
            continue
        changed = factory.build(dataclasses.replace(settings_, **{name: _ALTERED[name]}))
        assert (repr(changed) != repr(built)) == (name in factory.used()), name


def test_the_strength_factories_cover_every_family_and_every_mixdpo_setting():
    assert set(STRENGTH_FACTORIES) == set(FAMILIES)
    read = set().union(*(factory.used() for factory in STRENGTH_FACTORIES.values()))
    # the rest say who shares a draw of beta (strength_unit), not which distribution
    assert read == {f.name for f in dataclasses.fields(MixDPOSettings)} - {
        "strength", "strength_unit", "annotator_by"}
    assert repr(build_objective("mixdpo", strength="gamma", strength_shape=3.0).strength) == \
        repr(Gamma(shape=3.0, rate=16.7, learnable=True))
    assert repr(build_objective("mixdpo").strength) == repr(PointMass(0.1, learnable=False))
