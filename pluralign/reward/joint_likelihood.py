"""The joint-likelihood model of [DAHP, §5.3]: the per-pair type variance corrected DPO reads.

Estimators, not objectives: they produce the ``pair_variance`` column of
:class:`~pluralign.objectives.CorrectedDPOObjective` (Lemma 5.3, Eq. 19), either from a
latent-class joint-likelihood model fitted to paired preferences (:func:`joint_preference_loss`,
:func:`pair_variance`) or, when annotators label the same pair twice, from the tabular joint
likelihood (:func:`repeat_label_variance`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pluralign.objectives.base import upcast


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
        + F.logsigmoid(beta * upcast(first_margins))
        + F.logsigmoid(beta * upcast(second_margins))
    )
    return -torch.logsumexp(log_joint, dim=-1)


def pair_variance(margins: Tensor, class_logits: Tensor, beta: float = 1.0) -> Tensor:
    """Variance term of Lemma 5.3 (Eq. 19) from a joint-likelihood model: ``J(w≻l, w≻l) − P²``.

    The same pair labelled twice by one annotator gives ``J(w≻l, w≻l) = E_k σ_k²`` and J's
    marginal ``P(w≻l) = J(w≻l, w≻l) + J(w≻l, l≻w) = E_k σ_k`` (``σ_k = σ(β m_k)``), so the result
    is ``Var_k σ_k`` — the ``V`` that :func:`~pluralign.objectives.corrected_dpo_loss` expects.
    ``margins``: ``[..., K]``.
    """
    probs = torch.softmax(class_logits, dim=-1)
    sig = torch.sigmoid(beta * upcast(margins))
    both = (probs * sig * sig).sum(dim=-1)
    marginal = (probs * sig).sum(dim=-1)
    return (both - marginal * marginal).clamp(min=0.0)


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
    negative by chance, so callers clamp (as :func:`~pluralign.objectives.corrected_dpo_loss`
    does). Groups with fewer than two annotators get 0 (no correction, i.e. plain DPO).

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
