"""How far must the sampling distribution of alternatives move to flip NBC? (§7.1, App. E)

NBC is linear in the sampling distribution: ``NBC_μ(a) = Σ_b μ(b) P[a, b]`` (Eq. 13). For two
options with ``NBC_μ(better) > NBC_μ(worse)`` the smallest total-variation change that swaps them
is the linear program ([DAHP, App. E])

    minimise   ½ Σ_b t_b                         (= TV(μ, μ'))
    subject to −t_b ≤ μ'(b) − μ(b) ≤ t_b          (t_b ≥ |μ' − μ|)
               Σ_b μ'(b) (P[worse, b] − P[better, b]) ≥ δ   (NBC_μ'(worse) ≥ NBC_μ'(better) + δ)
               Σ_b μ'(b) = 1,  ε ≤ μ'(b) ≤ 1     (every option keeps support)

with ``ε`` keeping every option in the support and ``δ`` demanding a strict swap (the paper sets
both to 1e-5). It is feasible iff putting all free mass on ``argmax_b c_b`` (``c = P[worse] −
P[better]``) reaches δ, i.e. ``ε Σ_b c_b + (1 − nε) max_b c_b ≥ δ``; infeasible instances are
reported as ``inf`` without calling the solver. Many instances are solved at once as one
block-diagonal LP (the blocks share no variables, so the joint minimum is the per-block minimum)
with ``scipy.optimize.linprog(method="highs")``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from pluralign.social_choice.borda import Link, borda_from_matrix, preference_matrix, ranking
from pluralign.social_choice.errors import SocialChoiceError, check_probabilities

BLOCKS_PER_SOLVE = 2000


def _solve_flip_blocks(pref: np.ndarray, base: np.ndarray, better: np.ndarray, worse: np.ndarray,
                       eps: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Solve the flip LP for ``B`` independent instances; returns ``(tv[B], probs[B, n])``."""
    num_blocks, num = base.shape
    idx = np.arange(num_blocks)
    coef = pref[idx, worse] - pref[idx, better]                       # [B, n]
    best_reachable = eps * coef.sum(axis=1) + (1.0 - num * eps) * coef.max(axis=1)
    feasible = best_reachable >= margin
    tv = np.full(num_blocks, np.inf)
    probs = np.full((num_blocks, num), np.nan)
    for start in range(0, num_blocks, BLOCKS_PER_SOLVE):
        chunk = np.flatnonzero(feasible[start:start + BLOCKS_PER_SOLVE]) + start
        if chunk.size:
            tv[chunk], probs[chunk] = _solve_feasible(coef[chunk], base[chunk], eps, margin)
    return tv, probs


def _solve_feasible(coef: np.ndarray, base: np.ndarray, eps: float,
                    margin: float) -> tuple[np.ndarray, np.ndarray]:
    num_blocks, num = base.shape
    nvar, nrow = 2 * num, 2 * num + 1
    blk = np.arange(num_blocks)[:, None]
    opt = np.arange(num)[None, :]
    mu_var = blk * nvar + opt                                          # [B, n]
    t_var = mu_var + num
    up_row, down_row = blk * nrow + opt, blk * nrow + num + opt
    flip_row = np.broadcast_to(blk * nrow + 2 * num, (num_blocks, num))
    rows = np.concatenate([up_row, up_row, down_row, down_row, flip_row], axis=1).ravel()
    cols = np.concatenate([mu_var, t_var, mu_var, t_var, mu_var], axis=1).ravel()
    vals = np.concatenate([np.ones_like(base), -np.ones_like(base), -np.ones_like(base),
                           -np.ones_like(base), -coef], axis=1).ravel()
    a_ub = sparse.csr_matrix((vals, (rows, cols)), shape=(num_blocks * nrow, num_blocks * nvar))
    b_ub = np.concatenate([base, -base, np.full((num_blocks, 1), -margin)], axis=1).ravel()
    eq_rows = np.broadcast_to(blk, (num_blocks, num)).ravel()
    a_eq = sparse.csr_matrix((np.ones(num_blocks * num), (eq_rows, mu_var.ravel())),
                             shape=(num_blocks, num_blocks * nvar))
    cost = np.tile(np.concatenate([np.zeros(num), np.full(num, 0.5)]), num_blocks)
    lower = np.tile(np.concatenate([np.full(num, eps), np.zeros(num)]), num_blocks)
    upper = np.tile(np.concatenate([np.ones(num), np.full(num, np.inf)]), num_blocks)
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=np.ones(num_blocks),
                  bounds=np.stack([lower, upper], axis=1), method="highs")
    if res.status != 0:
        raise SocialChoiceError(f"the min-TV linear program failed: {res.message}")
    x = res.x.reshape(num_blocks, nvar)
    probs = x[:, :num]
    return 0.5 * np.abs(probs - base).sum(axis=1), probs


def _prepare(rewards, type_probs, alt_probs, eps, margin, link, temperature):
    pref = preference_matrix(rewards, type_probs, link, temperature)
    num = pref.shape[-1]
    base = np.full(num, 1.0 / num) if alt_probs is None else np.asarray(alt_probs, dtype=float)
    check_probabilities(base, "alt_probs")
    base = np.broadcast_to(base, pref.shape[:-1]).astype(float)
    if not 0 <= eps < 1.0 / num:
        raise SocialChoiceError(f"eps must be in [0, 1/{num}), got {eps}")
    margin = eps if margin is None else float(margin)
    if margin < 0:
        raise SocialChoiceError(f"margin must be >= 0, got {margin}")
    return pref, base, margin


def min_tv_to_flip(
    rewards: np.ndarray,
    type_probs: np.ndarray,
    better: int,
    worse: int,
    eps: float = 1e-5,
    alt_probs: np.ndarray | None = None,
    margin: float | None = None,
    link: Link = "bt",
    temperature: float = 1.0,
) -> tuple[float, np.ndarray | None]:
    """Smallest TV change of the sampling distribution that ranks ``worse`` above ``better``.

    Solves the module's linear program for one question (``rewards[type, option]``).

    Args:
        rewards, type_probs, link, temperature: as in :func:`normalized_borda`.
        better, worse: option indices; after the change ``NBC(worse) ≥ NBC(better) + margin``.
        eps: every option keeps sampling probability at least ``eps``.
        alt_probs: the current sampling distribution ``μ`` (default uniform).
        margin: strictness ``δ`` of the swap; defaults to ``eps`` (the paper uses 1e-5 for both).

    Returns:
        ``(tv, new_alt_probs)``, or ``(inf, None)`` when no distribution with support ``≥ eps``
        swaps the two options.
    """
    rewards = np.asarray(rewards, dtype=float)
    if rewards.ndim != 2:
        raise SocialChoiceError("min_tv_to_flip takes one question: rewards[type, option]; "
                                "use sensitivity() for many questions")
    num = rewards.shape[-1]
    for name, value in (("better", better), ("worse", worse)):
        if not 0 <= int(value) < num:
            raise SocialChoiceError(f"{name}={value} is not an option index in [0, {num})")
    if better == worse:
        raise SocialChoiceError("better and worse must be different options")
    pref, base, margin = _prepare(rewards, type_probs, alt_probs, eps, margin, link, temperature)
    tv, probs = _solve_flip_blocks(pref[None], base[None], np.array([better]), np.array([worse]),
                                   eps, margin)
    if not np.isfinite(tv[0]):
        return float("inf"), None
    return float(tv[0]), probs[0]


@dataclass(frozen=True)
class SensitivityResult:
    """Per-question NBC sensitivity to the sampling distribution.

    Attributes:
        nbc: ``[Q, option]`` NBC under the base distribution.
        pair_tv: ``[Q, a, b]`` smallest TV making ``NBC(b) ≥ NBC(a) + margin`` (0 where that
            already holds, ``inf`` where impossible, ``nan`` on the diagonal).
        min_tv: ``[Q]`` smallest TV that changes the base NBC ranking (min over pairs with ``a``
            ranked above ``b``); ``inf`` if nothing can change it.
        flip_pair: ``[Q, 2]`` the ``(better, worse)`` pair achieving ``min_tv`` (−1 if none).
        flip_probs: ``[Q, option]`` the minimising sampling distribution (``nan`` if none).
    """

    nbc: np.ndarray
    pair_tv: np.ndarray
    min_tv: np.ndarray
    flip_pair: np.ndarray
    flip_probs: np.ndarray


def sensitivity(
    rewards: np.ndarray,
    type_probs: np.ndarray,
    alt_probs: np.ndarray | None = None,
    eps: float = 1e-5,
    margin: float | None = None,
    link: Link = "bt",
    temperature: float = 1.0,
) -> SensitivityResult:
    """Min-TV flips for every ordered option pair of many questions at once (§7.1).

    ``rewards[Q, type, option]`` (questions with the same number of options; group questions by
    option count for ragged surveys), ``type_probs[Q, type]``, ``alt_probs`` ``[option]`` or
    ``[Q, option]``. All LPs that are not trivially satisfied or infeasible are solved in a few
    block-diagonal HiGHS calls.
    """
    rewards = np.asarray(rewards, dtype=float)
    if rewards.ndim != 3:
        raise SocialChoiceError(f"rewards must be [question, type, option], got {rewards.shape}")
    pref, base, margin = _prepare(rewards, type_probs, alt_probs, eps, margin, link, temperature)
    num_q, num = base.shape
    nbc = borda_from_matrix(pref, base)
    pair_tv = np.zeros((num_q, num, num))
    a_idx, b_idx = np.meshgrid(np.arange(num), np.arange(num), indexing="ij")
    off_diag = a_idx != b_idx
    q_all, a_all, b_all = np.nonzero(np.broadcast_to(off_diag, (num_q, num, num)))
    need = nbc[q_all, b_all] - nbc[q_all, a_all] < margin
    q_n, a_n, b_n = q_all[need], a_all[need], b_all[need]
    tv, probs = _solve_flip_blocks(pref[q_n], base[q_n], a_n, b_n, eps, margin)
    pair_tv[q_n, a_n, b_n] = tv
    pair_tv[:, ~off_diag] = np.nan
    order = ranking(nbc)
    position = np.argsort(order, axis=-1)
    ahead = position[:, :, None] < position[:, None, :]                # a ranked above b
    candidate = np.where(ahead, pair_tv, np.inf)
    flat = candidate.reshape(num_q, -1).argmin(axis=1)
    min_tv = candidate.reshape(num_q, -1)[np.arange(num_q), flat]
    flip_pair = np.stack([flat // num, flat % num], axis=1)
    flip_pair[~np.isfinite(min_tv)] = -1
    flip_probs = np.full((num_q, num), np.nan)
    lookup = {(q, a, b): k for k, (q, a, b) in enumerate(zip(q_n, a_n, b_n, strict=True))}
    for q in np.flatnonzero(np.isfinite(min_tv)):
        key = (q, flip_pair[q, 0], flip_pair[q, 1])
        flip_probs[q] = probs[lookup[key]] if key in lookup else base[q]
    return SensitivityResult(nbc=nbc, pair_tv=pair_tv, min_tv=min_tv, flip_pair=flip_pair,
                             flip_probs=flip_probs)
