"""Normalized Borda count, user-weighted average reward and the infinite-data DPO optimum.

Notation ([DAHP, §3–4]): user types ``u`` with prior ``p(u)``, per-type rewards ``r_u(a)`` over a
finite set of options ``a``, a link ``F`` (Eq. 2; Bradley–Terry ``F = σ``), and the distribution
``μ`` from which alternative responses are sampled when the preference dataset is built.

All functions take ``rewards[..., type, option]`` and broadcast over any leading batch axes (for
instance many survey questions with the same number of options).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.special import expit, log_expit, ndtr

from pluralign.social_choice.errors import SocialChoiceError, check_probabilities, check_rewards

Link = Literal["bt", "thurstone"]
LINKS: tuple[str, ...] = ("bt", "thurstone")


def _uniform(num_options: int) -> np.ndarray:
    return np.full(num_options, 1.0 / num_options)


def preference_matrix(
    rewards: np.ndarray,
    type_probs: np.ndarray,
    link: Link = "bt",
    temperature: float = 1.0,
) -> np.ndarray:
    """Population preference probabilities ``P[..., a, b] = Σ_u p(u) F((r_u(a) − r_u(b)) / τ)``.

    [DAHP, Eq. 8] with the temperature-scaled link of [DAHP, §4.3] ("a variation of BT with a
    temperature τ"). ``link="bt"`` uses ``F = σ`` (Bradley–Terry), ``link="thurstone"`` the standard
    normal CDF (Thurstone–Mosteller). The diagonal is ``F(0) = ½`` for both links.
    """
    rewards = np.asarray(rewards, dtype=float)
    type_probs = np.asarray(type_probs, dtype=float)
    check_rewards(rewards, type_probs)
    if not temperature > 0:
        raise SocialChoiceError(f"temperature must be > 0, got {temperature}")
    if link not in LINKS:
        raise SocialChoiceError(f"unknown link {link!r}; valid links: {', '.join(LINKS)}")
    diff = (rewards[..., :, None] - rewards[..., None, :]) / temperature
    per_type = expit(diff) if link == "bt" else ndtr(diff)
    return np.einsum("...u,...uab->...ab", type_probs, per_type)


def borda_from_matrix(pref: np.ndarray, alt_probs: np.ndarray) -> np.ndarray:
    """``NBC(a) = Σ_b μ(b) P[a, b]`` for a precomputed preference matrix (Eq. 13)."""
    return np.einsum("...ab,...b->...a", pref, alt_probs)


def normalized_borda(
    rewards: np.ndarray,
    type_probs: np.ndarray,
    alt_probs: np.ndarray | None = None,
    link: Link = "bt",
    temperature: float = 1.0,
) -> np.ndarray:
    """Normalized Borda count ([DAHP, Def. 4.1; Eq. 13]).

    ``NBC(a) = E_{u∼p} E_{a'∼μ} [F((r_u(a) − r_u(a')) / τ)]``: the probability that an annotator
    of a random type prefers ``a`` over an alternative drawn from ``μ``. The alternative ``a' = a``
    is included (it contributes ``μ(a)·F(0) = μ(a)/2``), exactly as in the definition, so that
    ``NBC`` is the quantity DPO's first-order condition matches (see :func:`dpo_limit`).

    Args:
        rewards: ``[..., type, option]`` per-type rewards.
        type_probs: ``[..., type]`` type prior ``p(u)``.
        alt_probs: ``[..., option]`` sampling distribution ``μ`` of alternatives; uniform if None.
        link: ``"bt"`` (σ) or ``"thurstone"`` (Φ).
        temperature: ``τ`` of the link; larger means noisier annotators.

    Returns:
        ``[..., option]`` scores in ``(0, 1)``.
    """
    pref = preference_matrix(rewards, type_probs, link, temperature)
    alt = _uniform(pref.shape[-1]) if alt_probs is None else np.asarray(alt_probs, dtype=float)
    check_probabilities(alt, "alt_probs")
    return borda_from_matrix(pref, alt)


def average_reward(rewards: np.ndarray, type_probs: np.ndarray) -> np.ndarray:
    """User-weighted average reward ``r̄(a) = Σ_u p(u) r_u(a)`` (Eq. 9, the paper's target)."""
    rewards = np.asarray(rewards, dtype=float)
    type_probs = np.asarray(type_probs, dtype=float)
    check_rewards(rewards, type_probs)
    return np.einsum("...u,...ua->...a", type_probs, rewards)


def _dpo_population_loss(h: np.ndarray, pref: np.ndarray, alt: np.ndarray) -> np.ndarray:
    diff = h[..., :, None] - h[..., None, :]
    weights = alt[..., :, None] * alt[..., None, :]
    return -np.sum(weights * pref * log_expit(diff), axis=(-2, -1))


def dpo_limit(
    rewards: np.ndarray,
    type_probs: np.ndarray,
    alt_probs: np.ndarray | None = None,
    link: Link = "bt",
    temperature: float = 1.0,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> np.ndarray:
    """Induced reward ``h(a) = β log π(a)/π_ref(a)`` of DPO's infinite-data optimum (§4.2).

    With pairs ``(a, b) ∼ μ × μ`` labelled by annotators of random type, DPO minimises the
    population cross-entropy ``L(h) = −Σ_{a,b} μ(a) μ(b) P[a, b] log σ(h(a) − h(b))``. Using
    ``P[b, a] = 1 − P[a, b]`` its gradient is

        ``∂L/∂h(a) = μ(a) Σ_b μ(b) [σ(h(a) − h(b)) − P[a, b]]``,

    so the first-order condition (Eq. 14) is ``Σ_b μ(b) σ(h(a) − h(b)) = NBC(a)``. Its left side
    is increasing in ``h(a)``, hence DPO ranks options exactly as NBC (Proposition 4.2); there is
    no closed form, so we solve it: ``L`` is convex in ``h`` (a sum of ``−log σ`` of linear maps)
    and strictly convex up to the additive constant when every ``μ(a) > 0``, so damped Newton
    with backtracking converges globally. The returned ``h`` has zero mean over options; the DPO
    policy over the options with a uniform reference is ``softmax(h)`` (with β = 1).

    Args:
        rewards, type_probs, alt_probs, link, temperature: as in :func:`normalized_borda`;
            ``alt_probs`` must be strictly positive (an option never sampled has no DPO optimum).
        tol: an instance has converged when its largest gradient entry is below this (or when
            its loss can no longer decrease at float precision).
        max_iter: Newton iterations at most.

    Returns:
        ``[..., option]`` induced rewards.
    """
    pref = preference_matrix(rewards, type_probs, link, temperature)
    num = pref.shape[-1]
    alt = _uniform(num) if alt_probs is None else np.asarray(alt_probs, dtype=float)
    check_probabilities(alt, "alt_probs", strictly_positive=True)
    alt = np.broadcast_to(alt, pref.shape[:-1]).copy()
    target = borda_from_matrix(pref, alt)
    h = np.zeros(pref.shape[:-1])
    loss = _dpo_population_loss(h, pref, alt)
    stalled = np.zeros(loss.shape, dtype=bool)
    for _ in range(max_iter):
        s = expit(h[..., :, None] - h[..., None, :])
        grad = alt * (borda_from_matrix(s, alt) - target)
        done = stalled | (np.max(np.abs(grad), axis=-1) < tol)
        if np.all(done):
            break
        curv = alt[..., :, None] * alt[..., None, :] * s * (1.0 - s)
        hess = np.einsum("...ab,ab->...ab", -curv, 1.0 - np.eye(num))
        hess[..., np.arange(num), np.arange(num)] = -hess.sum(axis=-1)
        # The Hessian is singular along the all-ones direction (h is defined up to a constant);
        # adding alt alt^T makes it positive definite without changing the step's other parts.
        hess = hess + alt[..., :, None] * alt[..., None, :]
        step = -np.linalg.solve(hess, grad[..., None])[..., 0]
        scale = np.where(done, 0.0, 1.0)
        for _ in range(40):
            trial = h + scale[..., None] * step
            trial_loss = _dpo_population_loss(trial, pref, alt)
            # rounding-level increases are accepted so the full Newton step is taken near the
            # optimum, where the true decrease (~ gradient²) is below float resolution
            worse = trial_loss > loss + 1e-12 * np.abs(loss)
            if not np.any(worse):
                break
            scale = np.where(worse, scale / 2.0, scale)
        # an instance whose loss cannot decrease at float precision has converged
        stalled |= worse
        h = np.where(worse[..., None], h, trial)
        loss = np.where(worse, loss, trial_loss)
    else:
        raise SocialChoiceError(f"dpo_limit did not converge in {max_iter} Newton steps "
                                f"(largest gradient {np.max(np.abs(grad)):.2e}); raise max_iter "
                                "or check for extreme rewards")
    return h - h.mean(axis=-1, keepdims=True)


def ranking(scores: np.ndarray) -> np.ndarray:
    """Option indices from best to worst along the last axis (stable for ties)."""
    return np.argsort(-np.asarray(scores), axis=-1, kind="stable")
