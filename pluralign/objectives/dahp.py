"""DAHP objectives: first-order-corrected DPO and the agreement loss ([DAHP, §5.1; §6]).

Notation ([DAHP]): h = β·Δ is the difference of the policy's induced rewards (Eq. 18) and
s = σ(h). With user types u, the population preference is P(w≻l) = E_u σ(Δ_u) (Eq. 8), where
Δ_u = r_u(w) − r_u(l) (β folded in). At the optimum π* of Eq. 10, h = E_u Δ_u (Eq. 11).

Both read a per-pair column their data must carry (``pair_variance``, ``agreement``); the
estimators that produce ``pair_variance`` are in :mod:`pluralign.reward.joint_likelihood`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pluralign.errors import ConfigError
from pluralign.numerics import host_checks
from pluralign.objectives.base import Column, Objective, beta_setting, setting, upcast
from pluralign.validation import COUNT, NON_NEGATIVE, POSITIVE, check_number

#: Per-pair column of corrected DPO: the type variance ``V`` of the preference probability.
PAIR_VARIANCE = "pair_variance"
#: Per-pair column of the agreement loss: +1 / −1 / 0 (see :func:`agreement_loss`).
AGREEMENT = "agreement"
#: Default ε of :func:`corrected_dpo_loss`: where s ≥ ½ the corrected likelihood stays above it.
CORRECTION_FLOOR = 1e-6


def corrected_dpo_loss(
    margin: Tensor,
    variance: Tensor,
    alpha: float,
    beta: float = 0.1,
    floor: float = CORRECTION_FLOOR,
) -> Tensor:
    """First-order-corrected DPO loss per pair, ``−log(s + α·c)`` ([DAHP, §5.1; Eqs. 17–19]).

    Derivation. Expand ``E_u σ(Δ_u)`` around ``Δ̄ = E_u Δ_u`` to second order:
    ``P(w≻l) ≈ σ(Δ̄) + ½ σ''(Δ̄) Var_u(Δ_u)`` with ``σ'' = s(1−s)(1−2s)`` (Eq. 17; DPO keeps only
    the zeroth-order term, Eq. 12). The joint-likelihood model of §5.3 estimates the variance of
    the per-annotator *probability* ``V = Var_u σ(Δ_u)``
    (:func:`~pluralign.reward.joint_likelihood.pair_variance`), and the first-order expansion
    ``σ(Δ_u) ≈ s + s(1−s)(Δ_u − Δ̄)`` gives ``Var_u Δ_u ≈ V / (s(1−s))²`` (Lemma 5.3).
    Substituting, with the policy's ``h = β·margin`` in place of ``Δ̄`` (Eq. 11):

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
    (``logaddexp`` of ``log s`` and ``log c`` for ``h < 0``). Where ``h < 0`` and the cap
    ``1 − ε`` binds (far from the expansion point, e.g. margin ≤ −40 at β = 0.1, V = 0.2) the
    value is the cap's and the gradient is DPO's ``∂ log σ(h)`` (straight-through), so the
    worst-ranked pairs are still pushed up instead of getting a zero gradient; the optimum,
    where no cap binds, is unchanged.

    Args:
        margin: ``Δ`` per pair (policy log-ratio difference, no β inside).
        variance: ``V`` per pair, the type variance of the preference probability. A
            negative value counts as 0: the unbiased estimate
            (:func:`~pluralign.reward.joint_likelihood.tabular_variance`) is negative by
            chance where the true ``V`` is near 0. NaN/inf is refused (outside
            :func:`~pluralign.numerics.sync_free`).
        alpha: correction strength ``α ≥ 0``.
        beta: DPO's β.
        floor: ``ε``: the corrected likelihood is kept in ``[ε, 1 − ε]`` where it is corrected.
    """
    if alpha < 0:
        raise ConfigError(f"corrected DPO alpha must be >= 0, got {alpha!r}")
    if not 0 < floor < 0.5:
        raise ConfigError(f"corrected DPO floor must be in (0, 0.5), got {floor!r}")
    h = beta * upcast(margin)
    if host_checks() and not bool(torch.isfinite(variance).all()):
        raise ConfigError("corrected DPO: pair_variance must be a finite number; got "
                          f"{variance[~torch.isfinite(variance)].flatten()[0].item()!r}; "
                          "re-estimate it (pluralign.reward.joint_likelihood)")
    variance = variance.to(h.dtype).clamp(min=0.0)
    log_s, log_one_minus_s = F.logsigmoid(h), F.logsigmoid(-h)
    s = log_s.exp()
    tiny = torch.finfo(h.dtype).tiny
    spread = (log_s + log_one_minus_s).exp().clamp(min=tiny)         # s(1−s), never 0
    gap = 1.0 - 2.0 * s                                              # c = ½α·gap·V/spread
    # α·c = ½α·gap·V/spread with |α·c| ≤ 2: V/max(spread, |½α·gap|·V/2) never forms V/spread²
    # where s(1−s) underflows (∞·0 = NaN), and where it binds q is clipped anyway. The second
    # floor, √tiny, covers α·V ≈ 0 (α = 0 included), where the first is 0: the backward's
    # V/den² stays finite, and the value moves only where |h| > 354 (float64; 43 in float32)
    # and α·V < 3e-154 (2e-19), where the expansion has no meaning left (the true q jumps from
    # σ(h) at α·V = 0 to the floor ε for any α·V > e^{−|h|}). ½α multiplies last, so a tiny
    # α scales the backward down before any large factor, instead of after it (∞·α = ∞).
    half_alpha = 0.5 * alpha
    denominator = torch.maximum(spread, half_alpha * gap.abs() * variance / 2).clamp(min=tiny**0.5)
    correction = half_alpha * (gap * (variance / denominator))
    # h ≥ 0: s ≥ ½ and correction ≤ 0, so log q = log s + log1p(correction / s), q floored at ε.
    s_pos = s.clamp(min=0.5)                      # = s on this branch; keeps the other finite
    log_q_pos = log_s + torch.log1p(torch.maximum(correction / s_pos, floor / s_pos - 1))
    # h < 0: correction ≥ 0, so log q = logaddexp(log s, log correction), q capped at 1 − ε.
    ceiling = torch.log1p(torch.tensor(-floor, dtype=h.dtype, device=h.device))
    log_q_neg = torch.where(
        correction > 0,
        torch.minimum(torch.logaddexp(log_s, torch.log(correction.clamp(min=tiny))), ceiling),
        log_s)
    # h < 0 where q is capped at 1 − ε (the expansion's c → ∞ as s → 0, e.g. margins ≤ −40
    # at β = 0.1, V = 0.2): the capped value is flat, which would leave the worst pairs without
    # a gradient. There the loss keeps its value and takes DPO's gradient (straight-through:
    # log s − stop_grad(log s) adds 0 to the value), so those pairs are still pushed up.
    capped = (h < 0) & (log_q_neg >= ceiling)
    log_q_neg = torch.where(capped, log_q_neg + (log_s - log_s.detach()), log_q_neg)
    return -torch.where(h >= 0, log_q_pos, log_q_neg)


def agreement_loss(
    margin: Tensor, agreement: Tensor, num_types: int, beta: float = 0.1
) -> Tensor:
    """Consistent loss on items labelled by every type ([DAHP, §6; Eq. 20; Prop. 6.1]).

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
    h = beta * upcast(margin) * int(num_types)
    agreement = agreement.to(h.dtype)
    return -((agreement > 0) * F.logsigmoid(h) + (agreement < 0) * F.logsigmoid(-h))


def _batch_field(batch: Mapping[str, Any] | None, key: str, owner: str) -> Tensor:
    if batch is None or key not in batch:
        raise ConfigError(f"{owner} needs batch[{key!r}] for every pair; the data collator or "
                          f"environment must provide it")
    return torch.as_tensor(batch[key])


@dataclass
class CorrectedDPOSettings:
    """Settings of :class:`CorrectedDPOObjective`."""

    beta: float = beta_setting()
    correction_alpha: float = setting(1.0, "Weight alpha >= 0 of the first-order variance "
                                      "correction (1 = the theory's value, 0 = DPO).",
                                      rule=NON_NEGATIVE)


class CorrectedDPOObjective(Objective):
    """First-order-corrected DPO reading ``batch["pair_variance"]`` (:func:`corrected_dpo_loss`)."""

    Settings = CorrectedDPOSettings
    hint = "Corrected DPO has a fixed beta."

    @classmethod
    def from_settings(cls, settings: CorrectedDPOSettings) -> Objective:
        return cls(alpha=settings.correction_alpha, beta=settings.beta)

    def __init__(self, alpha: float = 1.0, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = check_number(beta, "corrected DPO beta", **POSITIVE)
        self.alpha = check_number(alpha, "corrected DPO correction_alpha", **NON_NEGATIVE)

    def columns(self) -> tuple[Column, ...]:
        return (Column(PAIR_VARIANCE),)

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        variance = _batch_field(batch, PAIR_VARIANCE, "CorrectedDPOObjective")
        return corrected_dpo_loss(margin, variance.to(margin.device), self.alpha, self.beta)

    def metrics(self) -> dict[str, float]:
        return {"beta_mean": self.beta, "beta_var": 0.0, "alpha": self.alpha}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}"


@dataclass
class AgreementSettings:
    """Settings of :class:`AgreementObjective`."""

    beta: float = beta_setting()
    agreement_num_types: int | None = setting(None, "Number of user types K that label every "
                                              "item (required by the agreement objective).",
                                              rule=COUNT, required=True)


class AgreementObjective(Objective):
    """Agreement-only consistent loss reading ``batch["agreement"]`` (:func:`agreement_loss`)."""

    Settings = AgreementSettings
    hint = "The agreement loss has a fixed beta."

    @classmethod
    def from_settings(cls, settings: AgreementSettings) -> Objective:
        return cls(num_types=settings.agreement_num_types, beta=settings.beta)

    def __init__(self, num_types: int, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = check_number(beta, "agreement beta", **POSITIVE)
        self.num_types = check_number(num_types, "agreement_num_types", **COUNT)

    def columns(self) -> tuple[Column, ...]:
        return (Column(AGREEMENT),)

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        agreement = _batch_field(batch, AGREEMENT, "AgreementObjective")
        return agreement_loss(margin, agreement.to(margin.device), self.num_types, self.beta)

    def metrics(self) -> dict[str, float]:
        return {"beta_mean": self.beta, "beta_var": 0.0, "num_types": float(self.num_types)}

    def extra_repr(self) -> str:
        return f"num_types={self.num_types}, beta={self.beta:g}"
