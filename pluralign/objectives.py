"""Per-pair preference losses on reward margins (seeds/001 Eq. 1 and Eq. 3).

A *margin* is ``Δ = r(x, y_chosen) − r(x, y_rejected)``; for a policy ``r = log π_θ − log π_ref``
summed over completion tokens, with no β inside. Every loss here is per pair (no reduction), so the
caller chooses the mean, a weighted mean or a per-subgroup sum.

Objectives are ``nn.Module`` objects (they may own learnable strength parameters that the
optimiser must see) with ``forward(margin, batch=None) -> per-pair loss`` and
``metrics() -> dict[str, float]``.
:func:`build_objective` turns a config name into one; the registry :data:`OBJECTIVES` maps each
name to a builder and is extended further down this file by the DAHP objectives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pluralign.errors import ConfigError
from pluralign.numerics import log_point_expected_sigmoid
from pluralign.strength import PointMass, StrengthDistribution, build_strength

# ----------------------------------------------------------------------------------------------
# Losses (pure functions)
# ----------------------------------------------------------------------------------------------


def dpo_loss(margin: Tensor, beta: float | Tensor) -> Tensor:
    """DPO loss per pair, ``−log σ(β·Δ)`` (seeds/001 Eq. 1; Rafailov et al. 2023).

    Computed as ``−logsigmoid(β·Δ)`` in at least float32 (bfloat16/float16 margins are upcast and
    the loss is float32), so it is finite for any finite margin.
    """
    return -log_point_expected_sigmoid(margin, beta)


def mixdpo_loss(margin: Tensor, strength: StrengthDistribution) -> Tensor:
    """MixDPO loss per pair, ``−log E_{β~p(β)}[σ(β·Δ)]`` (seeds/001 Eq. 3).

    The expectation is evaluated by the strength distribution in log space
    (:meth:`StrengthDistribution.log_expected_sigmoid`), which is finite for ``|Δ|`` up to 1e4.
    With ``PointMass(β)`` this is the very same computation as :func:`dpo_loss`, hence equal
    bit for bit.
    """
    return -strength.log_expected_sigmoid(margin)


# ----------------------------------------------------------------------------------------------
# Objective objects
# ----------------------------------------------------------------------------------------------


class Objective(nn.Module):
    """A per-pair preference loss with optional learnable state.

    Subclasses implement ``forward(margin, batch=None) -> Tensor`` (per-pair losses, same shape as
    ``margin``) and ``metrics() -> dict[str, float]`` (what the trainer logs every step).
    ``batch`` carries per-pair side information some objectives need (e.g. ``pair_variance``).
    """

    name: str = "objective"

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        raise NotImplementedError


class DPOObjective(Objective):
    """DPO with a fixed preference strength ``beta`` (seeds/001 Eq. 1)."""

    name = "dpo"

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        if not beta > 0:
            raise ConfigError(f"DPO beta must be > 0, got {beta!r}")
        self.beta = float(beta)

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        return dpo_loss(margin, self.beta)

    def metrics(self) -> dict[str, float]:
        return {"beta_mean": self.beta, "beta_var": 0.0}

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}"


class MixDPOObjective(Objective):
    """MixDPO: DPO marginalised over a preference-strength distribution (seeds/001 Eq. 3).

    Owns its :class:`~pluralign.strength.StrengthDistribution`, so a learnable strength's
    parameters are this module's parameters and reach the optimiser with the policy's.
    """

    name = "mixdpo"

    def __init__(self, strength: StrengthDistribution) -> None:
        super().__init__()
        if not isinstance(strength, StrengthDistribution):
            raise ConfigError(
                f"MixDPOObjective needs a StrengthDistribution, got {type(strength).__name__}"
            )
        self.strength = strength

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        return mixdpo_loss(margin, self.strength)

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        out = {
            "beta_mean": float(self.strength.mean()),
            "beta_var": float(self.strength.variance()),
        }
        out.update({f"strength/{k}": v for k, v in self.strength.params().items()})
        return out


# ----------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------


def _build_dpo(
    strength: str = "point", learnable_strength: bool = True, beta: float = 0.1, **params: Any
) -> Objective:
    if strength != "point" or params:
        raise ConfigError(
            f"objective 'dpo' has a fixed beta; got strength={strength!r} and extra parameters "
            f"{sorted(params)}. Use objective 'mixdpo' for a strength distribution."
        )
    return DPOObjective(beta)


def _build_mixdpo(
    strength: str = "point", learnable_strength: bool = True, beta: float = 0.1, **params: Any
) -> Objective:
    if strength == "point":
        return MixDPOObjective(PointMass(beta=params.pop("beta", beta), learnable=False))
    return MixDPOObjective(build_strength(strength, learnable=learnable_strength, **params))


#: name -> builder(strength=..., learnable_strength=..., beta=..., **params) -> Objective.
#: Other objective families register themselves here (see the DAHP section below).
OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "dpo": _build_dpo,
    "mixdpo": _build_mixdpo,
}


def build_objective(
    name: str,
    strength: str = "point",
    learnable_strength: bool = True,
    beta: float = 0.1,
    **params: Any,
) -> Objective:
    """Build the objective called ``name`` (one of :data:`OBJECTIVES`).

    ``strength`` names the preference-strength family for MixDPO (``"point"``, ``"lognormal"``,
    ``"gamma"``) and ``params`` its parameters (``mu``/``sigma``, ``shape``/``rate``, ``method``,
    ``num_points``); paper defaults apply to anything left out. ``beta`` is DPO's fixed strength
    (and the base β of objectives that have one). Unknown names or parameters raise
    :class:`~pluralign.errors.ConfigError`.

    Example::

        objective = build_objective("mixdpo", strength="gamma")   # Gamma(k=2, λ=16.7), learnable
        loss = objective(margins).mean()
    """
    try:
        builder = OBJECTIVES[name]
    except KeyError:
        raise ConfigError(
            f"unknown objective {name!r}; valid objectives: {', '.join(sorted(OBJECTIVES))}"
        ) from None
    return builder(strength=strength, learnable_strength=learnable_strength, beta=beta, **params)


# ----------------------------------------------------------------------------------------------
# DAHP objectives (first-order-corrected DPO, agreement loss) — appended by the DAHP work
# ----------------------------------------------------------------------------------------------
# Notation (seeds/003): h = β·Δ is the difference of the policy's induced rewards (Eq. 18) and
# s = σ(h). With user types u, the population preference is P(w≻l) = E_u σ(Δ_u) (Eq. 8), where
# Δ_u = r_u(w) − r_u(l) (β folded in). At the optimum π* of Eq. 10, h = E_u Δ_u (Eq. 11).

#: Default ε of :func:`corrected_dpo_loss`: where s ≥ ½ the corrected likelihood stays above it.
CORRECTION_FLOOR = 1e-6


def _upcast(margin: Tensor) -> Tensor:
    return margin if margin.dtype in (torch.float32, torch.float64) else margin.float()


def corrected_dpo_loss(
    margin: Tensor,
    variance: Tensor,
    alpha: float,
    beta: float = 0.1,
    floor: float = CORRECTION_FLOOR,
) -> Tensor:
    """First-order-corrected DPO loss per pair, ``−log(s + α·c)`` (seeds/003 §5.1, Eqs. 17–19).

    Derivation. Expand ``E_u σ(Δ_u)`` around ``Δ̄ = E_u Δ_u`` to second order:
    ``P(w≻l) ≈ σ(Δ̄) + ½ σ''(Δ̄) Var_u(Δ_u)`` with ``σ'' = s(1−s)(1−2s)`` (Eq. 17; DPO keeps only
    the zeroth-order term, Eq. 12). The joint-likelihood model of §5.3 estimates the variance of
    the per-annotator *probability* ``V = Var_u σ(Δ_u)`` (see :func:`pair_variance`), and the
    first-order expansion ``σ(Δ_u) ≈ s + s(1−s)(Δ_u − Δ̄)`` gives ``Var_u Δ_u ≈ V / (s(1−s))²``
    (Lemma 5.3). Substituting, with the policy's ``h = β·margin`` in place of ``Δ̄`` (Eq. 11):

        ``q(h) = s + α·c``,   ``c = ½ (1 − 2s) · V / (s(1−s))``,   ``s = σ(β·margin)``.

    ``α = 1`` is the theory's value and ``α = 0`` is DPO; β enters only through ``h``. Note
    ``q(−h) = 1 − q(h)`` for the same ``V``, so ``q`` is a proper two-outcome likelihood.

    Keeping the log's argument in range, without moving the optimum. Far from the expansion
    point ``c`` is unbounded (``c → −∞`` as ``s → 1``), so ``q`` can leave ``[0, 1]`` and the raw
    loss is unbounded below. Only the likelihood is clipped: ``q ← max(q, ε)`` where ``s ≥ ½``
    (there ``c ≤ 0``) and ``q ← min(q, 1 − ε)`` where ``s < ½`` (there ``c ≥ 0``). The two rules
    mirror each other, so ``q(−h) = 1 − q(h)`` still holds, and α = 0 (or V = 0) is DPO exactly.
    The loss equals the raw corrected loss wherever ``ε ≤ q ≤ 1 − ε``, which is where its optimum
    lies (a cell's expected loss ``−P log q − (1−P) log(1−q)`` is smallest at ``q = P``), so the
    optimum is the raw corrected one for every α; the tests check that it is a stationary point
    of the raw loss in the proximity environment at α ∈ {1, 2, 5, 10}. (An earlier Bhatia–Davis
    cap ``V ≤ ρ·s(1−s)`` with ``ρ = min(1, 2(1−ε)/α)`` bound at the optimum for α ≳ 3.2 — in 34%
    of cells at α = 5 — and moved the population optimum by TV 8.4e-3.) To keep gradients
    finite where ``s(1−s)`` underflows, ``V/(s(1−s))`` is capped where ``|α·c| > 2``: there the
    clip binds either way, so the value is unchanged. The log is evaluated stably
    (``logaddexp`` of ``log s`` and ``log c`` for ``h < 0``).

    Args:
        margin: ``Δ`` per pair (policy log-ratio difference, no β inside).
        variance: ``V`` per pair, the type variance of the preference probability (≥ 0).
        alpha: correction strength ``α ≥ 0``.
        beta: DPO's β.
        floor: ``ε``: the corrected likelihood is kept in ``[ε, 1 − ε]`` where it is corrected.
    """
    if alpha < 0:
        raise ConfigError(f"corrected DPO alpha must be >= 0, got {alpha!r}")
    if not 0 < floor < 0.5:
        raise ConfigError(f"corrected DPO floor must be in (0, 0.5), got {floor!r}")
    h = beta * _upcast(margin)
    variance = variance.to(h.dtype).clamp(min=0.0)
    log_s, log_one_minus_s = F.logsigmoid(h), F.logsigmoid(-h)
    s = log_s.exp()
    tiny = torch.finfo(h.dtype).tiny
    spread = (log_s + log_one_minus_s).exp().clamp(min=tiny)         # s(1−s), never 0
    half_gap = 0.5 * alpha * (1.0 - 2.0 * s)
    # α·c = half_gap·V/spread with |α·c| ≤ 2: V/max(spread, |half_gap|·V/2) never forms V/spread²
    # where s(1−s) underflows (∞·0 = NaN), and where it binds q is clipped anyway.
    correction = half_gap * (variance / torch.maximum(spread, half_gap.abs() * variance / 2))
    # h ≥ 0: s ≥ ½ and correction ≤ 0, so log q = log s + log1p(correction / s), q floored at ε.
    s_pos = s.clamp(min=0.5)                      # = s on this branch; keeps the other finite
    log_q_pos = log_s + torch.log1p(torch.maximum(correction / s_pos, floor / s_pos - 1))
    # h < 0: correction ≥ 0, so log q = logaddexp(log s, log correction), q capped at 1 − ε.
    ceiling = torch.log1p(torch.tensor(-floor, dtype=h.dtype, device=h.device))
    log_q_neg = torch.where(
        correction > 0,
        torch.minimum(torch.logaddexp(log_s, torch.log(correction.clamp(min=tiny))), ceiling),
        log_s)
    return -torch.where(h >= 0, log_q_pos, log_q_neg)


def agreement_loss(
    margin: Tensor, agreement: Tensor, num_types: int, beta: float = 0.1
) -> Tensor:
    """Consistent loss on items labelled by every type (seeds/003 §6, Eq. 20 and Prop. 6.1).

    ``ℓ = −[all chose w]·log σ(e·h) − [all chose l]·log σ(−e·h)``, ``h = β·margin``, ``e`` = number
    of (equally represented) types; items with any disagreement contribute 0.

    Derivation. Under BT, ``P(all chose w) = Π_u σ(Δ_u)`` and ``P(all chose l) = Π_u σ(−Δ_u)``,
    so conditioned on agreement ``P(w | agree) = 1 / (1 + Π_u e^{−Δ_u}) = σ(Σ_u Δ_u) = σ(e·Δ̄)``.
    At π*, ``h = Δ̄`` (Eq. 11), so this is a logistic likelihood in ``e·h`` whose minimiser is π*
    exactly (tested in the tabular infinite-data limit). A public implementation uses
    ``σ(e·(1 − h))`` in the second term, which is not consistent.

    Args:
        margin: ``Δ`` per pair (chosen minus rejected, no β inside).
        agreement: per pair +1 (all types chose the "chosen" response), −1 (all chose the
            "rejected" one) or 0 (they disagree).
        num_types: ``e``.
        beta: DPO's β.
    """
    if int(num_types) < 1:
        raise ConfigError(f"agreement loss needs num_types >= 1, got {num_types!r}")
    h = beta * _upcast(margin) * int(num_types)
    agreement = agreement.to(h.dtype)
    return -((agreement > 0) * F.logsigmoid(h) + (agreement < 0) * F.logsigmoid(-h))


def joint_preference_loss(
    first_margins: Tensor, second_margins: Tensor, class_logits: Tensor, beta: float = 1.0
) -> Tensor:
    """Cross-entropy of a latent-class joint-likelihood model ``J`` on paired preferences (§5.3).

    ``J(w₁≻l₁, w₂≻l₂) = Σ_k π_k σ(β m_k(w₁, l₁)) σ(β m_k(w₂, l₂))``, ``π = softmax(class_logits)``:
    the probability that one annotator (of unknown class ``k``) makes both observed choices.
    ``first_margins``/``second_margins`` are ``[..., K]`` per-class reward margins of the two pairs,
    oriented chosen-minus-rejected; returns ``−log J`` per row, computed with ``logsumexp``.
    """
    log_joint = (
        torch.log_softmax(class_logits, dim=-1)
        + F.logsigmoid(beta * _upcast(first_margins))
        + F.logsigmoid(beta * _upcast(second_margins))
    )
    return -torch.logsumexp(log_joint, dim=-1)


def pair_variance(margins: Tensor, class_logits: Tensor, beta: float = 1.0) -> Tensor:
    """Variance term of Lemma 5.3 (Eq. 19) from a joint-likelihood model: ``J(w≻l, w≻l) − P²``.

    The same pair labelled twice by one annotator gives ``J(w≻l, w≻l) = E_k σ_k²`` and J's
    marginal ``P(w≻l) = J(w≻l, w≻l) + J(w≻l, l≻w) = E_k σ_k`` (``σ_k = σ(β m_k)``), so the result
    is ``Var_k σ_k`` — the ``V`` that :func:`corrected_dpo_loss` expects. ``margins``: ``[..., K]``.
    """
    probs = torch.softmax(class_logits, dim=-1)
    sig = torch.sigmoid(beta * _upcast(margins))
    both = (probs * sig * sig).sum(dim=-1)
    marginal = (probs * sig).sum(dim=-1)
    return (both - marginal * marginal).clamp(min=0.0)


def _batch_field(batch: Mapping[str, Any] | None, key: str, owner: str) -> Tensor:
    if batch is None or key not in batch:
        raise ConfigError(f"{owner} needs batch[{key!r}] for every pair; the data collator or "
                          f"environment must provide it")
    return torch.as_tensor(batch[key])


class CorrectedDPOObjective(Objective):
    """First-order-corrected DPO reading ``batch["pair_variance"]`` (:func:`corrected_dpo_loss`)."""

    name = "corrected_dpo"

    def __init__(self, alpha: float = 1.0, beta: float = 0.1) -> None:
        super().__init__()
        if not beta > 0 or not alpha >= 0:
            raise ConfigError(f"corrected DPO needs beta > 0 and alpha >= 0, got {beta}, {alpha}")
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        variance = _batch_field(batch, "pair_variance", "CorrectedDPOObjective")
        return corrected_dpo_loss(margin, variance.to(margin.device), self.alpha, self.beta)

    def metrics(self) -> dict[str, float]:
        return {"beta_mean": self.beta, "beta_var": 0.0, "alpha": self.alpha}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}"


class AgreementObjective(Objective):
    """Agreement-only consistent loss reading ``batch["agreement"]`` (:func:`agreement_loss`)."""

    name = "agreement"

    def __init__(self, num_types: int, beta: float = 0.1) -> None:
        super().__init__()
        if not beta > 0 or int(num_types) < 1:
            raise ConfigError(f"agreement needs beta > 0 and num_types >= 1, got {beta}, "
                              f"{num_types}")
        self.num_types, self.beta = int(num_types), float(beta)

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        agreement = _batch_field(batch, "agreement", "AgreementObjective")
        return agreement_loss(margin, agreement.to(margin.device), self.num_types, self.beta)

    def metrics(self) -> dict[str, float]:
        return {"beta_mean": self.beta, "beta_var": 0.0, "num_types": float(self.num_types)}

    def extra_repr(self) -> str:
        return f"num_types={self.num_types}, beta={self.beta:g}"


def _point_only(name: str, strength: str) -> None:
    if strength != "point":
        raise ConfigError(f"objective {name!r} has a fixed beta; got strength={strength!r}")


def _build_corrected_dpo(strength: str = "point", learnable_strength: bool = True,
                         beta: float = 0.1, alpha: float = 1.0, **params: Any) -> Objective:
    _point_only("corrected_dpo", strength)
    if params:
        raise ConfigError(f"objective 'corrected_dpo' takes alpha only; got {sorted(params)}")
    return CorrectedDPOObjective(alpha=alpha, beta=beta)


def _build_agreement(strength: str = "point", learnable_strength: bool = True,
                     beta: float = 0.1, num_types: int | None = None,
                     **params: Any) -> Objective:
    _point_only("agreement", strength)
    if num_types is None or params:
        raise ConfigError("objective 'agreement' takes num_types (the number of user types that "
                          f"label every item) and nothing else; got num_types={num_types!r}, "
                          f"extra {sorted(params)}")
    return AgreementObjective(num_types=num_types, beta=beta)


OBJECTIVES["corrected_dpo"] = _build_corrected_dpo
OBJECTIVES["agreement"] = _build_agreement


def repeat_label_variance(
    first: Tensor, second: Tensor, group: Tensor, num_groups: int
) -> tuple[Tensor, Tensor]:
    """Tabular estimate of Lemma 5.3's variance when annotators label the same pair twice.

    For annotator ``i`` of pair ``g`` let ``z_i1, z_i2 ∈ {0, 1}`` say whether each of its two
    labels chose the pair's first response, and ``s_i = z_i1 + z_i2``. The tabular joint
    likelihood gives ``J(w≻l, w≻l) = E[z_i1 z_i2]``, estimated by ``mean_i s_i(s_i−1)/2``, and
    ``P(w≻l)² = E[z_i z_j]`` for two *different* annotators, estimated without bias by the
    U-statistic ``(S² − Σ_i s_i²) / (4 m (m−1))`` (``S = Σ_i s_i``, ``m`` annotators). Their
    difference is an unbiased estimate of ``Var_u P_u(w≻l)`` (Eq. 19); it can be slightly
    negative by chance, so callers clamp (as :func:`corrected_dpo_loss` does). Groups with fewer
    than two annotators get 0 (no correction, i.e. plain DPO).

    Args:
        first, second: ``[n]`` labels (1 = chose the group's first response) of each annotator.
        group: ``[n]`` pair index of each annotator, in ``[0, num_groups)``.
        num_groups: number of pairs.

    Returns:
        ``(variance[num_groups], annotators[num_groups])``.
    """
    s = (first.to(torch.float64) + second.to(torch.float64))
    group = group.long()
    m = torch.bincount(group, minlength=num_groups).to(torch.float64)
    total = torch.bincount(group, weights=s, minlength=num_groups)
    squares = torch.bincount(group, weights=s * s, minlength=num_groups)
    both = torch.bincount(group, weights=s * (s - 1) / 2, minlength=num_groups)
    enough = m >= 2
    safe_m = m.clamp(min=2)
    variance = both / safe_m - (total * total - squares) / (4 * safe_m * (safe_m - 1))
    return torch.where(enough, variance, torch.zeros_like(variance)), m
