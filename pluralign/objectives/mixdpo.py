"""MixDPO: DPO marginalised over a preference-strength distribution ([MixDPO, Eq. 3]).

The per-pair loss is ``−log E_{β~p(β)}[σ(β·Δ)]`` for a
:class:`~pluralign.strength.StrengthDistribution` ``p``: β is drawn afresh for every pair
(``strength_unit: pair``, the paper's). With ``strength_unit: annotator`` one β is shared by all
pairs of an annotator (the panel mixed logit, Train 2009 §6.7; [MixDPO, Fig. 1]'s per-person
strength) and the loss is :func:`panel_mixdpo_loss`; see there for how batches hold annotators.
Which distribution a config builds, and which settings that reads, is one table:
:data:`STRENGTH_FACTORIES`, one :class:`StrengthFactory` per family.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from pluralign.errors import ConfigError
from pluralign.objectives.base import Column, Objective, beta_setting, setting
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


def panel_mixdpo_loss(margin: Tensor, strength: StrengthDistribution, annotator: Tensor) -> Tensor:
    """Panel MixDPO loss per pair: annotator ``a``'s ``−log E_β Π_{j∈a} σ(β·Δ_j)`` shared equally
    by its ``n_a`` pairs, so the batch mean is ``−Σ_a log E_β Π_{j∈a} σ(β·Δ_j) / Σ_a n_a``.

    One β per annotator (the panel mixed logit: Train, *Discrete Choice Methods with
    Simulation*, 2009, §6.7, with [MixDPO, Eq. 3]'s strength distribution); the expectation is
    the exact adaptive rule of :mod:`pluralign.panel`. ``annotator`` holds each pair's annotator
    id (any integers); the pairs of one id in this batch form one factor of the likelihood. The
    trainer's :class:`~pluralign.training.sampler.WholeGroupBatchSampler` puts all pairs of an
    annotator in one batch, except an annotator with more pairs than a batch holds, whose pairs
    are split into chunks that each form their own factor: the objective is then a composite
    likelihood (Lindsay 1988; Varin, Reid & Firth 2011) — unbiased estimating equations, with the
    dependence inside a chunk kept and that between chunks of one annotator ignored. With a
    point mass this equals the DPO loss.
    """
    if not isinstance(strength, StrengthDistribution):
        raise ConfigError(f"panel_mixdpo_loss needs a StrengthDistribution, got "
                          f"{type(strength).__name__}")
    annotator = torch.as_tensor(annotator, device=margin.device).reshape(-1)
    if annotator.shape != margin.shape:
        raise ConfigError(f"panel_mixdpo_loss: {annotator.numel()} annotator ids for "
                          f"{margin.numel()} margins; every pair needs its annotator")
    _, local, counts = torch.unique(annotator.long(), return_inverse=True, return_counts=True)
    log_likelihood = strength.log_panel_likelihood(margin, local, num_groups=counts.numel())
    return -(log_likelihood / counts.to(log_likelihood.dtype))[local]


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


#: Values of the ``strength_unit`` setting: a fresh β per pair, or one β per annotator.
STRENGTH_UNITS = ("pair", "annotator")
#: The batch column holding each pair's annotator id for ``strength_unit: annotator``.
ANNOTATOR_COLUMN = "strength_annotator"
#: Settings read only with ``strength_unit: annotator``.
PANEL_SETTINGS = frozenset({"annotator_by"})


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
    strength_unit: str = setting(
        "pair", "Who shares one draw of beta: 'pair' (the paper's: a fresh beta for every pair) "
        "or 'annotator' (one beta per annotator, the panel mixed logit that identifies the "
        "spread of beta; batches then hold whole annotators, chunked when an annotator has more "
        "pairs than a batch holds).", choices=STRENGTH_UNITS)
    annotator_by: str = setting(
        "annotator_id", "With strength_unit=annotator: what defines an annotator (a column such "
        "as annotator_id, or 'attr.<name>' / 'ctx.<name>', pluralign.data.groups).")
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

    Args:
        strength: the strength distribution.
        unit: ``"pair"`` (:func:`mixdpo_loss`) or ``"annotator"`` (:func:`panel_mixdpo_loss`;
            the objective then declares the whole-group column :data:`ANNOTATOR_COLUMN`, built
            from ``annotator_by``, and the trainer batches whole annotators).
        annotator_by: what defines an annotator (:mod:`pluralign.data.groups`), with
            ``unit="annotator"``.
    """

    Settings = MixDPOSettings
    hint = "Each strength family reads only its own settings (see `pluralign train --help`)."

    def __init__(self, strength: StrengthDistribution, unit: str = "pair",
                 annotator_by: str = "annotator_id") -> None:
        super().__init__()
        if not isinstance(strength, StrengthDistribution):
            raise ConfigError(
                f"MixDPOObjective needs a StrengthDistribution, got {type(strength).__name__}"
            )
        if unit not in STRENGTH_UNITS:
            raise ConfigError(f"strength_unit={unit!r} is unknown; use one of "
                              f"{', '.join(STRENGTH_UNITS)}")
        self.strength, self.unit, self.annotator_by = strength, unit, annotator_by

    @classmethod
    def used(cls, settings: MixDPOSettings) -> set[str]:
        panel = PANEL_SETTINGS if settings.strength_unit == "annotator" else set()
        return {"strength", "strength_unit", *panel, *STRENGTH_FACTORIES[settings.strength].used()}

    @classmethod
    def choice(cls, settings: MixDPOSettings) -> str:
        return f" with strength={settings.strength!r}, strength_unit={settings.strength_unit!r}"

    @classmethod
    def from_settings(cls, settings: MixDPOSettings) -> Objective:
        return cls(STRENGTH_FACTORIES[settings.strength].build(settings), settings.strength_unit,
                   settings.annotator_by)

    def columns(self) -> tuple[Column, ...]:
        """With ``strength_unit: annotator``, each pair's annotator id (whole groups per batch)."""
        if self.unit == "pair":
            return ()
        return (Column(ANNOTATOR_COLUMN, ids=True, ids_from=self.annotator_by, whole=True),)

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        if self.unit == "pair":
            return mixdpo_loss(margin, self.strength)
        if batch is None or ANNOTATOR_COLUMN not in batch:
            raise ConfigError(f"strength_unit='annotator' needs each pair's annotator: pass a "
                              f"batch with the {ANNOTATOR_COLUMN!r} column (the trainer builds it "
                              f"from annotator_by={self.annotator_by!r})")
        return panel_mixdpo_loss(margin, self.strength, batch[ANNOTATOR_COLUMN])

    def extra_repr(self) -> str:
        return f"strength_unit={self.unit!r}"

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        out = {
            "beta_mean": float(self.strength.mean()),
            "beta_var": float(self.strength.variance()),
        }
        out.update({f"strength/{k}": v for k, v in self.strength.params().items()})
        return out
