"""Corrected DPO, agreement loss and the joint-likelihood variance ([DAHP, §5–6]).

References: the mixture likelihood E_u σ(Δ_u) and the formulas evaluated in mpmath, brute-force
enumeration of classes and annotator pairs, and exact minimisation of population losses.
"""

import itertools
import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pluralign.errors import ConfigError
from pluralign.objectives import (
    AgreementObjective,
    CorrectedDPOObjective,
    agreement_loss,
    build_objective,
    corrected_dpo_loss,
    dpo_loss,
)
from pluralign.reward.joint_likelihood import (
    joint_preference_loss,
    pair_variance,
    repeat_label_variance,
)


@pytest.fixture(autouse=True, scope="module")
def _float64_default():
    """float64 tensors by default in this module only: a module-level set_default_dtype would leak
    into every test collected in the same pytest process (e.g. the trainer's float32 models)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def mp_corrected(h, v, alpha):
    s = 1 / (1 + mpmath.e ** (-mpmath.mpf(h)))
    return -mpmath.log(s + alpha * (1 - 2 * s) * v / (2 * s * (1 - s)))


@pytest.mark.parametrize("h, v, alpha", [(0.3, 0.01, 1.0), (-1.2, 0.05, 1.0), (2.0, 0.02, 2.0),
                                         (-0.5, 0.1, 2.0), (0.0, 0.2, 1.0), (1.0, 0.0, 1.5)])
def test_corrected_matches_formula_inside_the_cap(h, v, alpha):
    got = corrected_dpo_loss(torch.tensor(h), torch.tensor(v), alpha, beta=1.0)
    assert float(got) == pytest.approx(float(mp_corrected(h, v, alpha)), rel=1e-12)


def test_beta_scales_the_margin_only():
    margin, v = torch.tensor([0.7, -3.0]), torch.tensor([0.03, 0.05])
    np.testing.assert_allclose(corrected_dpo_loss(margin, v, 1.0, beta=0.1),
                               corrected_dpo_loss(0.1 * margin, v, 1.0, beta=1.0))


def test_alpha_zero_is_dpo():
    margin = torch.linspace(-30, 30, 101)
    np.testing.assert_allclose(corrected_dpo_loss(margin, torch.full_like(margin, 0.1), 0.0, 0.5),
                               dpo_loss(margin, 0.5), rtol=1e-12)


def test_second_order_expansion_beats_dpo_on_mixtures():
    """−log(s + c) approximates −log E_u σ(Δ_u) better than DPO for moderate spread (Eq. 17)."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        deltas = rng.normal(rng.normal(), 0.5, size=3)
        exact = -math.log(float(sum(1 / (1 + mpmath.e ** -d) for d in deltas) / 3))
        p_u = 1 / (1 + np.exp(-deltas))
        variance = torch.tensor(p_u.var())
        h = torch.tensor(deltas.mean())
        corrected = float(corrected_dpo_loss(h, variance, 1.0, beta=1.0))
        dpo = float(dpo_loss(h, 1.0))
        assert abs(corrected - exact) < abs(dpo - exact)


@settings(max_examples=200, deadline=None)
@given(h=st.floats(-1e4, 1e4), v=st.floats(0, 2.0), alpha=st.floats(0, 10))
def test_corrected_likelihood_is_a_probability_everywhere(h, v, alpha):
    margin = torch.tensor([h, -h], requires_grad=True)
    loss = corrected_dpo_loss(margin, torch.tensor([v, v]), alpha, beta=1.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(margin.grad).all()
    q = torch.exp(-loss.detach())
    lower = torch.minimum(torch.sigmoid(margin.detach()), torch.tensor(1e-6))
    assert (q >= lower * (1 - 1e-9)).all() and (q <= 1 + 1e-12).all()
    assert float(q.sum()) == pytest.approx(1.0, abs=1e-9)      # q(h) + q(−h) = 1


def test_corrected_float32_and_bfloat16_finite():
    for dtype in (torch.float32, torch.bfloat16):
        margin = torch.tensor([-1e4, -50.0, -1e-3, 0.0, 1e-3, 50.0, 1e4], dtype=dtype)
        loss = corrected_dpo_loss(margin, torch.full(margin.shape, 0.2), 2.0, beta=0.1)
        assert loss.dtype == torch.float32 and torch.isfinite(loss).all()


def test_agreement_loss_formula():
    margin = torch.tensor([0.4, 0.4, 0.4, -2.0])
    agreement = torch.tensor([1, -1, 0, -1])
    got = agreement_loss(margin, agreement, num_types=3, beta=0.5)
    want = [-math.log(1 / (1 + math.exp(-0.6))), -math.log(1 / (1 + math.exp(0.6))), 0.0,
            -math.log(1 / (1 + math.exp(-3.0)))]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def proximity_like_instance():
    """Three equally represented BT types over 12 options with conflicting optima."""
    y = np.arange(12)
    centers, scales = (2, 6, 9), (3.0, 1.0, 2.5)
    return np.stack([s * np.maximum(0, 1 - 0.2 * np.abs(y - c)) for c, s in zip(centers, scales,
                                                                                  strict=True)])


def minimise_population(loss_of_h, num):
    h = torch.zeros(num, requires_grad=True)
    opt = torch.optim.LBFGS([h], max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_of_h(h)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return torch.softmax(h.detach(), 0).numpy()


def test_agreement_loss_recovers_optimum_in_tabular_limit():
    rewards = torch.tensor(proximity_like_instance())
    diff = rewards[:, :, None] - rewards[:, None, :]
    all_first, all_second = torch.sigmoid(diff).prod(0), torch.sigmoid(-diff).prod(0)
    optimum = torch.softmax(rewards.mean(0), 0).numpy()

    def consistent(h):
        m = h[:, None] - h[None, :]
        return (all_first * agreement_loss(m, torch.ones_like(m), 3, beta=1.0)
                + all_second * agreement_loss(m, -torch.ones_like(m), 3, beta=1.0)).sum()

    def public_variant(h):          # σ(e·(1 − h)) in the second term
        m = h[:, None] - h[None, :]
        return -(all_first * torch.nn.functional.logsigmoid(3 * m)
                 + all_second * torch.nn.functional.logsigmoid(3 * (1 - m))).sum()

    tv = 0.5 * np.abs(minimise_population(consistent, 12) - optimum).sum()
    tv_public = 0.5 * np.abs(minimise_population(public_variant, 12) - optimum).sum()
    assert tv < 1e-6
    assert tv_public > 1e-3


def test_joint_model_and_variance_by_enumeration():
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    logits = rng.normal(size=3)
    weights = np.exp(logits) / np.exp(logits).sum()

    def sig(z):
        return 1 / (1 + math.exp(-z))

    nll = joint_preference_loss(torch.tensor(m1), torch.tensor(m2), torch.tensor(logits), 0.5)
    var = pair_variance(torch.tensor(m1), torch.tensor(logits), 0.5)
    for i in range(5):
        joint = sum(weights[k] * sig(0.5 * m1[i, k]) * sig(0.5 * m2[i, k]) for k in range(3))
        assert float(nll[i]) == pytest.approx(-math.log(joint), rel=1e-12)
        both = sum(weights[k] * sig(0.5 * m1[i, k]) ** 2 for k in range(3))
        other = sum(weights[k] * sig(0.5 * m1[i, k]) * sig(-0.5 * m1[i, k]) for k in range(3))
        marginal = both + other                         # J's marginal over the second label
        assert float(var[i]) == pytest.approx(both - marginal**2, abs=1e-14)


def test_repeat_label_variance_matches_pairwise_definition():
    rng = np.random.default_rng(2)
    first, second = rng.integers(0, 2, size=40), rng.integers(0, 2, size=40)
    group = rng.integers(0, 4, size=40)
    got, counts = repeat_label_variance(torch.tensor(first), torch.tensor(second),
                                        torch.tensor(group), 5)
    for g in range(5):
        idx = np.flatnonzero(group == g)
        assert counts[g] == len(idx)
        if len(idx) < 2:
            assert got[g] == 0
            continue
        same = np.mean(first[idx] * second[idx])
        cross = np.mean([(first[i] + second[i]) * (first[j] + second[j]) / 4
                         for i, j in itertools.permutations(idx, 2)])
        assert float(got[g]) == pytest.approx(same - cross, abs=1e-12)


def test_repeat_label_variance_is_unbiased():
    rng = np.random.default_rng(3)
    p_types = np.array([0.9, 0.2, 0.5])
    num_groups, per_group = 4000, 6
    types = rng.integers(0, 3, size=(num_groups, per_group))
    p = p_types[types]
    first, second = rng.random(p.shape) < p, rng.random(p.shape) < p
    group = np.repeat(np.arange(num_groups), per_group)
    est, _ = repeat_label_variance(torch.tensor(first.ravel()), torch.tensor(second.ravel()),
                                   torch.tensor(group), num_groups)
    assert float(est.mean()) == pytest.approx(p_types.var(), abs=0.004)


def test_objectives_are_registered_and_read_their_batch():
    corrected = build_objective("corrected_dpo", beta=0.2, correction_alpha=2.0)
    assert isinstance(corrected, CorrectedDPOObjective)
    assert corrected.metrics() == {"beta_mean": 0.2, "beta_var": 0.0, "alpha": 2.0}
    margin = torch.tensor([0.5, -1.0])
    np.testing.assert_allclose(corrected(margin, {"pair_variance": torch.tensor([0.1, 0.0])}),
                               corrected_dpo_loss(margin, torch.tensor([0.1, 0.0]), 2.0, 0.2))
    agreement = build_objective("agreement", beta=0.2, agreement_num_types=4)
    assert isinstance(agreement, AgreementObjective)
    np.testing.assert_allclose(agreement(margin, {"agreement": torch.tensor([1, 0])}),
                               agreement_loss(margin, torch.tensor([1, 0]), 4, 0.2))
    with pytest.raises(ConfigError, match="pair_variance"):
        corrected(margin, {})
    with pytest.raises(ConfigError, match="num_types"):
        build_objective("agreement")
    with pytest.raises(ConfigError, match="strength"):
        build_objective("corrected_dpo", strength="gamma")
    with pytest.raises(ConfigError, match="alpha"):
        corrected_dpo_loss(margin, torch.zeros(2), -1.0)
