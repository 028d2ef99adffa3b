"""NBC, average reward, DPO limit, Luce-Shepard rewards and the min-TV LP ([DAHP, §4; App. E]).

References are independent of the code under test: explicit loops over the definition with
``math``/``mpmath``, ``scipy.optimize.minimize`` on DPO's population loss, a fractional-knapsack
closed form and a brute-force simplex grid for the LP.
"""

import itertools
import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.stats import norm

from pluralign.social_choice import (
    SocialChoiceError,
    average_reward,
    dpo_limit,
    luce_shepard_rewards,
    min_tv_to_flip,
    normalized_borda,
    preference_matrix,
    ranking,
    sensitivity,
)


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def brute_nbc(rewards, type_probs, alt_probs, temperature=1.0):
    """Definition 4.1 written as explicit sums (a' = a included)."""
    num_types, num_opts = len(rewards), len(rewards[0])
    return [sum(type_probs[u] * alt_probs[b] * sig((rewards[u][a] - rewards[u][b]) / temperature)
                for u in range(num_types) for b in range(num_opts)) for a in range(num_opts)]


# Mediocrity promotion (§4.3): type 1 strongly favours long, type 2 short, type 3 slightly medium.
# Options (long, short, medium). By construction r̄ = (10/3, 10/3, 13/6) ranks medium last, yet
# medium beats long and short pairwise (0.525) because type 2 (resp. 1) ranks it above long
# (resp. short) almost surely and type 3 leans to it: NBC(medium) = 0.517 > NBC(long) = 0.492.
MEDIOCRITY = np.array([[10.0, 0.0, 3.0], [0.0, 10.0, 3.0], [0.0, 0.0, 0.5]])

# Sensitivity to μ (§4.3): type 1 prefers y1 over y2 strongly, type 2 prefers y2 slightly and
# rates y3 between them, so y3 helps y2 against y1. d_c = P[1, c] − P[2, c] gives
# NBC(y1) − NBC(y2) = (1 − μ3)/2 · (d1 + d2) + μ3 · d3 along μ = ((1−μ3)/2, (1−μ3)/2, μ3).
SENSITIVE = np.array([[5.0, 0.0, -10.0], [-0.25, 0.25, 0.0]])


def test_nbc_matches_definition_with_self_comparison():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(3, 4))
    type_probs, alt = rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(4))
    expected = brute_nbc(rewards.tolist(), type_probs, alt, temperature=0.7)
    got = normalized_borda(rewards, type_probs, alt, temperature=0.7)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_thurstone_link_and_batching():
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=(5, 2, 3))
    type_probs = rng.dirichlet(np.ones(2), size=5)
    pref = preference_matrix(rewards, type_probs, link="thurstone", temperature=2.0)
    for q in range(5):
        for a, b in itertools.product(range(3), repeat=2):
            want = sum(type_probs[q, u] * norm.cdf((rewards[q, u, a] - rewards[q, u, b]) / 2.0)
                       for u in range(2))
            assert pref[q, a, b] == pytest.approx(want, rel=1e-12)


def test_average_reward():
    got = average_reward(MEDIOCRITY, np.full(3, 1 / 3))
    np.testing.assert_allclose(got, [10 / 3, 10 / 3, 6.5 / 3])


def test_mediocrity_promotion():
    probs = np.full(3, 1 / 3)
    avg = average_reward(MEDIOCRITY, probs)
    nbc = normalized_borda(MEDIOCRITY, probs)
    assert avg[2] < avg[0] == avg[1]
    assert nbc[2] > nbc[0] and nbc[2] > nbc[1]
    np.testing.assert_allclose(nbc, brute_nbc(MEDIOCRITY.tolist(), probs, [1 / 3] * 3))
    # DPO's limit promotes medium too (Prop. 4.2)
    assert ranking(dpo_limit(MEDIOCRITY, probs))[0] == 2


def test_temperature_flips_nbc_but_not_average_reward():
    probs = np.full(3, 1 / 3)
    cold = normalized_borda(MEDIOCRITY, probs, temperature=1.0)
    hot = normalized_borda(MEDIOCRITY, probs, temperature=10.0)
    assert cold[2] > cold[0] and hot[2] < hot[0]
    # at high temperature σ(Δ/τ) ≈ ½ + Δ/4τ, so NBC ranks like the average reward
    assert list(ranking(hot)[[2]]) == list(ranking(average_reward(MEDIOCRITY, probs))[[2]])


def test_sampling_distribution_flips_nbc():
    probs = np.array([0.5, 0.5])
    pref = [[sum(probs[u] * mpmath.mpf(1) / (1 + mpmath.e ** -(SENSITIVE[u][a] - SENSITIVE[u][c]))
                 for u in range(2)) for c in range(3)] for a in range(3)]
    d = [pref[0][c] - pref[1][c] for c in range(3)]
    threshold = float((d[0] + d[1]) / (d[0] + d[1] - 2 * d[2]))
    assert 1 / 3 < threshold < 1

    def nbc(mu3):
        return normalized_borda(SENSITIVE, probs, np.array([(1 - mu3) / 2, (1 - mu3) / 2, mu3]))

    assert nbc(1 / 3)[0] > nbc(1 / 3)[1]
    assert nbc(threshold - 1e-3)[0] > nbc(threshold - 1e-3)[1]
    assert nbc(threshold + 1e-3)[0] < nbc(threshold + 1e-3)[1]
    avg = average_reward(SENSITIVE, probs)
    assert avg[0] > avg[1]                        # the sampling distribution cannot move r̄
    tv, alt = min_tv_to_flip(SENSITIVE, probs, better=0, worse=1)
    assert tv <= threshold - 1 / 3 + 1e-4         # at most this move (+ the 1e-5 strictness)
    flipped = normalized_borda(SENSITIVE, probs, alt)
    assert flipped[1] > flipped[0]


def test_dpo_limit_solves_population_loss():
    rng = np.random.default_rng(2)
    rewards = 2 * rng.normal(size=(3, 5))
    type_probs, alt = rng.dirichlet(np.ones(3)), rng.dirichlet(np.ones(5))

    def loss(h):
        total = 0.0
        for a, b in itertools.product(range(5), repeat=2):
            p = sum(type_probs[u] * sig(rewards[u, a] - rewards[u, b]) for u in range(3))
            total -= alt[a] * alt[b] * p * math.log(sig(h[a] - h[b]))
        return total

    ref = minimize(loss, np.zeros(5), method="BFGS", options={"gtol": 1e-11}).x
    np.testing.assert_allclose(dpo_limit(rewards, type_probs, alt), ref - ref.mean(), atol=1e-5)


def test_dpo_limit_homogeneous_is_reward():
    rewards = np.array([[0.3, -1.0, 2.0, 0.1]])
    np.testing.assert_allclose(dpo_limit(rewards, np.ones(1)), rewards[0] - rewards[0].mean(),
                               atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_types=st.integers(1, 4), num_opts=st.integers(2, 6),
       scale=st.floats(0.1, 5.0))
def test_dpo_limit_ranks_like_nbc(seed, num_types, num_opts, scale):
    rng = np.random.default_rng(seed)
    rewards = scale * rng.normal(size=(num_types, num_opts))
    type_probs = rng.dirichlet(np.ones(num_types))
    alt = rng.dirichlet(np.ones(num_opts)) * 0.9 + 0.1 / num_opts
    h = dpo_limit(rewards, type_probs, alt)
    nbc = normalized_borda(rewards, type_probs, alt)
    for a, b in itertools.permutations(range(num_opts), 2):
        if nbc[a] > nbc[b] + 1e-9:
            assert h[a] > h[b]


def test_luce_shepard_recovers_centered_rewards():
    rng = np.random.default_rng(3)
    rewards = rng.normal(size=(2, 4))
    shares = np.exp(rewards) / np.exp(rewards).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(luce_shepard_rewards(shares, floor=1e-6),
                               rewards - rewards.mean(axis=1, keepdims=True), atol=1e-12)


def test_luce_shepard_floor_keeps_zero_shares_finite():
    got = luce_shepard_rewards(np.array([[3.0, 1.0, 0.0]]), floor=1e-3)
    probs = np.array([0.75, 0.25, 1e-3]) / 1.001
    np.testing.assert_allclose(got[0], np.log(probs) - np.log(probs).mean())
    with pytest.raises(SocialChoiceError, match="empty row"):
        luce_shepard_rewards(np.array([[0.0, 0.0]]))


def greedy_min_tv(pref, base, better, worse, eps, margin):
    """Closed form of the flip LP: move mass from the lowest-gain options to the best one."""
    coef = pref[worse] - pref[better]
    deficit = margin - coef @ base
    if deficit <= 0:
        return 0.0
    target = int(np.argmax(coef))
    tv = 0.0
    for source in np.argsort(coef):
        if source == target or deficit <= 0:
            continue
        gain = coef[target] - coef[source]
        if gain <= 0:
            break
        move = min(max(base[source] - eps, 0.0), deficit / gain)
        tv, deficit = tv + move, deficit - move * gain
    return tv if deficit <= 1e-12 else math.inf


@pytest.mark.parametrize("seed", range(8))
def test_min_tv_is_feasible_and_matches_closed_form(seed):
    rng = np.random.default_rng(seed)
    rewards = 2 * rng.normal(size=(3, 5))
    type_probs = rng.dirichlet(np.ones(3))
    nbc = normalized_borda(rewards, type_probs)
    order = ranking(nbc)
    better, worse = int(order[0]), int(order[-1])
    tv, alt = min_tv_to_flip(rewards, type_probs, better, worse, eps=1e-5)
    want = greedy_min_tv(preference_matrix(rewards, type_probs), np.full(5, 0.2), better, worse,
                         1e-5, 1e-5)
    assert tv == pytest.approx(want, abs=1e-7) or (math.isinf(tv) and math.isinf(want))
    if alt is not None:
        assert alt.min() >= 1e-5 - 1e-9 and alt.sum() == pytest.approx(1.0)
        assert 0.5 * np.abs(alt - 0.2).sum() == pytest.approx(tv, abs=1e-9)
        new = normalized_borda(rewards, type_probs, alt)
        assert new[worse] > new[better]
    else:
        assert alt is None


@pytest.mark.parametrize("seed", range(4))
def test_min_tv_is_minimal_against_a_grid(seed):
    rng = np.random.default_rng(10 + seed)
    rewards = 3 * rng.normal(size=(2, 3))
    type_probs = rng.dirichlet(np.ones(2))
    order = ranking(normalized_borda(rewards, type_probs))
    better, worse = int(order[0]), int(order[1])
    tv, _ = min_tv_to_flip(rewards, type_probs, better, worse, eps=1e-5, margin=0.0)
    step = 1 / 600
    a, b = np.meshgrid(np.arange(0, 1 + step / 2, step), np.arange(0, 1 + step / 2, step))
    w = np.stack([a.ravel(), b.ravel(), 1 - a.ravel() - b.ravel()], axis=1)
    w = w[(w >= -1e-12).all(axis=1)].clip(min=0)
    mu = 1e-5 + (1 - 3e-5) * w                   # the feasible simplex {μ ≥ ε}, boundary included
    full = normalized_borda(np.broadcast_to(rewards, (len(mu), 2, 3)),
                            np.broadcast_to(type_probs, (len(mu), 2)), mu)
    brute = np.array([brute_nbc(rewards.tolist(), type_probs, row) for row in mu[::997]])
    np.testing.assert_allclose(full[::997], brute, rtol=1e-12)
    flips = full[:, worse] >= full[:, better]
    grid_tv = 0.5 * np.abs(mu - 1 / 3).sum(axis=1)
    if not flips.any():
        assert math.isinf(tv)
        return
    best = grid_tv[flips].min()
    assert tv <= best + 1e-9                      # the LP optimum beats every grid point ...
    assert tv >= best - 2 * step                  # ... and the grid gets within its resolution


def test_min_tv_infeasible_when_dominated():
    rewards = np.array([[2.0, 0.0, 1.0], [3.0, 1.0, 0.0]])   # option 0 beats option 1 for all
    assert min_tv_to_flip(rewards, np.array([0.5, 0.5]), better=0, worse=1) == (math.inf, None)


def test_sensitivity_matches_single_lps():
    rng = np.random.default_rng(5)
    rewards = 2 * rng.normal(size=(6, 3, 4))
    type_probs = rng.dirichlet(np.ones(3), size=6)
    result = sensitivity(rewards, type_probs)
    for q in range(6):
        order = ranking(result.nbc[q])
        singles = [min_tv_to_flip(rewards[q], type_probs[q], int(order[i]), int(order[j]))[0]
                   for i in range(4) for j in range(i + 1, 4)]
        assert result.min_tv[q] == pytest.approx(min(singles), abs=1e-8)
        if np.isfinite(result.min_tv[q]):
            b, w = result.flip_pair[q]
            new = normalized_borda(rewards[q], type_probs[q], result.flip_probs[q])
            assert new[w] > new[b]
    assert np.isnan(result.pair_tv[:, range(4), range(4)]).all()


def test_bad_inputs_raise():
    with pytest.raises(SocialChoiceError, match="sum to 1"):
        normalized_borda(np.zeros((2, 3)), np.array([0.5, 0.6]))
    with pytest.raises(SocialChoiceError, match="strictly positive"):
        dpo_limit(np.zeros((1, 3)), np.ones(1), np.array([0.5, 0.5, 0.0]))
    with pytest.raises(SocialChoiceError, match="NaN"):
        normalized_borda(np.array([[0.0, np.nan]]), np.ones(1))
    with pytest.raises(SocialChoiceError, match="unknown link"):
        normalized_borda(np.zeros((1, 2)), np.ones(1), link="probit")
    with pytest.raises(SocialChoiceError, match="option index"):
        min_tv_to_flip(np.zeros((1, 3)), np.ones(1), better=0, worse=3)
