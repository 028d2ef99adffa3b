"""DPO: the per-pair loss ``−log σ(β·Δ)`` with a fixed preference strength ([MixDPO, Eq. 1]; [DPO]).

A *margin* is ``Δ = r(x, y_chosen) − r(x, y_rejected)``; for a policy ``r = log π_θ − log π_ref``
summed over completion tokens, with no β inside. Losses are per pair (no reduction), so the caller
chooses the mean, a weighted mean or a per-subgroup sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pluralign.errors import ConfigError
from pluralign.numerics import log_point_expected_sigmoid
from pluralign.objectives.base import Objective, beta_setting
from pluralign.validation import POSITIVE, check_number


def dpo_loss(margin: Tensor, beta: float | Tensor) -> Tensor:
    """DPO loss per pair, ``−log σ(β·Δ)`` ([MixDPO, Eq. 1]; [DPO]).

    Computed as ``−logsigmoid(β·Δ)`` in at least float32 (bfloat16/float16 margins are upcast and
    the loss is float32), so it is finite for any finite margin. ``beta`` (a number, or a tensor
    broadcasting against ``margin``) must be finite and > 0, else :class:`ConfigError`.
    """
    if isinstance(beta, Tensor):
        if not bool((torch.isfinite(beta) & (beta > 0)).all()):
            raise ConfigError(f"dpo_loss: beta={beta.tolist()!r} has entries that are not finite "
                              "and > 0; use positive finite strengths")
    else:
        check_number(beta, "dpo_loss: beta", minimum=0, exclusive_minimum=True)
    return -log_point_expected_sigmoid(margin, beta)


@dataclass
class DPOSettings:
    """Settings of :class:`DPOObjective`."""

    beta: float = beta_setting()


class DPOObjective(Objective):
    """DPO with a fixed preference strength ``beta`` ([MixDPO, Eq. 1])."""

    Settings = DPOSettings
    hint = "DPO has a fixed beta; use objective 'mixdpo' for a strength distribution."

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = check_number(beta, "DPO beta", **POSITIVE)

    @classmethod
    def from_settings(cls, settings: DPOSettings) -> Objective:
        return cls(settings.beta)

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        return dpo_loss(margin, self.beta)

    def metrics(self) -> dict[str, float]:
        return {"beta_mean": self.beta, "beta_var": 0.0}

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}"
