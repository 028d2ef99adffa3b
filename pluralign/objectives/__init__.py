"""Per-pair preference losses on reward margins ([MixDPO, Eq. 1; Eq. 3]; [DAHP]; GRPO).

A *margin* is ``Δ = r(x, y_chosen) − r(x, y_rejected)``; for a policy ``r = log π_θ − log π_ref``
summed over completion tokens, with no β inside. Every loss here is per pair (no reduction), so the
caller chooses the mean, a weighted mean or a per-subgroup sum.

One module per family, each an :class:`Objective` with its settings and the per-pair columns it
reads (:mod:`~pluralign.objectives.base`): :mod:`~pluralign.objectives.dpo`,
:mod:`~pluralign.objectives.mixdpo`, :mod:`~pluralign.objectives.dahp` (corrected DPO, agreement
loss), :mod:`~pluralign.objectives.group_robust`; :mod:`~pluralign.objectives.registry` names them
(:data:`OBJECTIVES`) and builds one from a config (:func:`build_objective`).
"""

from pluralign.objectives.base import Column, Objective, check_settings, setting
from pluralign.objectives.dahp import (
    AGREEMENT,
    CORRECTION_FLOOR,
    PAIR_VARIANCE,
    AgreementObjective,
    AgreementSettings,
    CorrectedDPOObjective,
    CorrectedDPOSettings,
    agreement_loss,
    corrected_dpo_loss,
)
from pluralign.objectives.dpo import DPOObjective, DPOSettings, dpo_loss
from pluralign.objectives.group_robust import (
    GROUP_COLUMN,
    INITIAL_WEIGHTS,
    GroupDPOObjective,
    GroupDPOSettings,
    GroupMixDPOObjective,
    GroupMixDPOSettings,
    GroupRobustObjective,
    GroupSettings,
    exponentiated_gradient_step,
    group_loss_estimates,
    group_robust_loss,
    reduced_group_sums,
)
from pluralign.objectives.mixdpo import (
    ANNOTATOR_COLUMN,
    STRENGTH_FACTORIES,
    STRENGTH_UNITS,
    MixDPOObjective,
    MixDPOSettings,
    StrengthFactory,
    mixdpo_loss,
    panel_mixdpo_loss,
)
from pluralign.objectives.registry import (
    OBJECTIVES,
    ObjectiveSpec,
    build_objective,
    objective_settings,
    resolve_objective,
)

__all__ = [
    "AGREEMENT", "ANNOTATOR_COLUMN", "CORRECTION_FLOOR", "GROUP_COLUMN", "INITIAL_WEIGHTS",
    "OBJECTIVES", "PAIR_VARIANCE", "STRENGTH_FACTORIES", "STRENGTH_UNITS", "AgreementObjective",
    "AgreementSettings", "Column",
    "CorrectedDPOObjective", "CorrectedDPOSettings", "DPOObjective", "DPOSettings",
    "GroupDPOObjective", "GroupDPOSettings", "GroupMixDPOObjective", "GroupMixDPOSettings",
    "GroupRobustObjective", "GroupSettings", "MixDPOObjective", "MixDPOSettings", "Objective",
    "ObjectiveSpec", "StrengthFactory", "agreement_loss", "build_objective", "check_settings",
    "corrected_dpo_loss", "dpo_loss", "exponentiated_gradient_step", "group_loss_estimates",
    "group_robust_loss", "mixdpo_loss", "objective_settings", "panel_mixdpo_loss",
    "reduced_group_sums",
    "resolve_objective", "setting",
]
