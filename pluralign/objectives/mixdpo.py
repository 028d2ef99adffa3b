"""MixDPO: DPO marginalised over a preference-strength distribution ([MixDPO, Eq. 3]).

The per-pair loss is ``−log E_{β~p(β)}[σ(β·Δ)]`` for a
:class:`~pluralign.strength.StrengthDistribution` ``p``. Which distribution a config builds, and
which settings that reads, is one table: :data:`STRENGTH_FACTORIES`, one
:class:`StrengthFactory` per family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pluralign.errors import ConfigError
from pluralign.objectives.base import Objective, beta_setting, setting
from pluralign.strength import (
    LOGNORMAL_METHODS,
    PARAMETERIZATIONS,
    StrengthDistribution,
    build_strength,
)
from pluralign.validation import COUNT, POSITIVE


def mixdpo_loss(margin: Tensor, strength: StrengthDistribution) -> Tensor:
    """MixDPO loss per pair, ``−log E_{β~p(β)}[σ(β·Δ)]`` ([MixDPO, Eq. 3]).

    The expectation is evaluated by the strength distribution in log space
    (:meth:`StrengthDistribution.log_expected_sigmoid`), which is finite for ``|Δ|`` up to 1e4.
    With ``PointMass(β)`` this is the very same computation as
    :func:`~pluralign.objectives.dpo_loss`, hence equal bit for bit.
    """
    if not isinstance(strength, StrengthDistribution):
        raise ConfigError(
            "mixdpo_loss needs a StrengthDistribution (e.g. pluralign.strength.Gamma(...) or "
            f"PointMass(beta=0.1)), got {type(strength).__name__} {strength!r}; for a fixed beta "
            "use dpo_loss(margin, beta)")
    return -strength.log_expected_sigmoid(margin)


@dataclass(frozen=True)
class StrengthFactory:
    """How one strength family is built from :class:`MixDPOSettings`.

    Attributes:
        family: the family's name in :data:`pluralign.strength.STRENGTHS`.
        arguments: each MixDPO setting the family reads -> the argument of the family's
            constructor it becomes. A family that does not read ``learnable_strength`` is built
            with fixed parameters (the point mass: a fixed β, i.e. DPO).
    """

    family: str
    arguments: Mapping[str, str]

    def used(self) -> set[str]:
        """The MixDPO settings this family reads."""
        return set(self.arguments)

    def build(self, settings: Any) -> StrengthDistribution:
        """The distribution ``settings`` describe."""
        values = {argument: getattr(settings, name) for name, argument in self.arguments.items()}
        return build_strength(self.family, **{"learnable": False, **values})


#: Strength family (the ``strength`` setting) -> how it is built and which settings it reads.
STRENGTH_FACTORIES: dict[str, StrengthFactory] = {
    "point": StrengthFactory("point", {"beta": "beta"}),
    "lognormal": StrengthFactory("lognormal", {
        "learnable_strength": "learnable", "strength_mu": "mu", "strength_sigma": "sigma",
        "lognormal_method": "method", "lognormal_num_points": "num_points",
        "strength_parameterization": "parameterization"}),
    "gamma": StrengthFactory("gamma", {
        "learnable_strength": "learnable", "strength_shape": "shape", "strength_rate": "rate",
        "strength_parameterization": "parameterization"}),
}


@dataclass
class MixDPOSettings:
    """Settings of :class:`MixDPOObjective`; which ones it reads depends on ``strength``."""

    strength: str = setting("point", "Preference-strength family: 'point' (a fixed beta, equals "
                            "DPO), 'lognormal' or 'gamma'.", choices=tuple(STRENGTH_FACTORIES))
    learnable_strength: bool = setting(True, "Learn the strength distribution's parameters "
                                       "jointly with the policy; false gives the paper's "
                                       "'fixed parameters' baseline (lognormal, gamma).")
    beta: float = beta_setting()
    strength_mu: float = setting(-2.3, "Initial LogNormal location mu of log beta (paper: -2.3).",
                                 rule={})
    strength_sigma: float = setting(0.6, "Initial LogNormal scale sigma > 0 of log beta "
                                    "(paper: 0.6).", rule=POSITIVE)
    lognormal_method: str = setting("quadrature", "How E[sigma(beta*margin)] is computed for "
                                    "LogNormal beta: 'quadrature' (a deterministic "
                                    "peak-centred trapezoidal rule) "
                                    "or 'monte_carlo' (the paper's K reparameterised samples).",
                                    choices=LOGNORMAL_METHODS)
    lognormal_num_points: int = setting(16, "Quadrature nodes or Monte Carlo samples K for "
                                        "LogNormal beta (paper: K = 16).", rule=COUNT)
    strength_shape: float = setting(2.0, "Initial Gamma shape k > 0 (paper: 2.0).",
                                    rule=POSITIVE)
    strength_rate: float = setting(16.7, "Initial Gamma rate lambda > 0 (paper: 16.7).",
                                   rule=POSITIVE)
    strength_parameterization: str = setting(
        "softplus", "Coordinates the optimiser moves for lognormal/gamma: 'softplus' (the "
        "paper's: sigma, k, lambda = softplus of raw values), 'log' or 'mean_cv2' (log E[beta], "
        "log CV^2: scale-free; with a strength learning rate near the policy's it keeps the "
        "CV^2 signal that 'softplus' at 1e-4 loses, docs/diagnostic.md).",
        choices=PARAMETERIZATIONS)


class MixDPOObjective(Objective):
    """MixDPO: DPO marginalised over a preference-strength distribution ([MixDPO, Eq. 3]).

    Owns its :class:`~pluralign.strength.StrengthDistribution`, so a learnable strength's
    parameters are this module's parameters and reach the optimiser with the policy's.
    """

    Settings = MixDPOSettings
    hint = "Each strength family reads only its own settings (see `pluralign train --help`)."

    def __init__(self, strength: StrengthDistribution) -> None:
        super().__init__()
        if not isinstance(strength, StrengthDistribution):
            raise ConfigError(
                f"MixDPOObjective needs a StrengthDistribution, got {type(strength).__name__}"
            )
        self.strength = strength

    @classmethod
    def used(cls, settings: MixDPOSettings) -> set[str]:
        return {"strength", *STRENGTH_FACTORIES[settings.strength].used()}

    @classmethod
    def choice(cls, settings: MixDPOSettings) -> str:
        return f" with strength={settings.strength!r}"

    @classmethod
    def from_settings(cls, settings: MixDPOSettings) -> Objective:
        return cls(STRENGTH_FACTORIES[settings.strength].build(settings))

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
