"""The objectives a config can name, and how a name and its settings become an objective.

:data:`OBJECTIVES` lists every registered objective class by its config name; adding an objective is
one module under :mod:`pluralign.objectives` and one line here. A name and its settings are first
resolved and checked (:func:`resolve_objective`, which builds nothing: what
``PreferenceConfig.validate`` runs) and then built (:meth:`ObjectiveSpec.build`, once, by the
trainer); :func:`build_objective` does both.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from pluralign.errors import ConfigError
from pluralign.objectives.base import Objective, check_settings
from pluralign.objectives.dahp import AgreementObjective, CorrectedDPOObjective
from pluralign.objectives.dpo import DPOObjective
from pluralign.objectives.group_robust import GroupDPOObjective, GroupMixDPOObjective
from pluralign.objectives.mixdpo import MixDPOObjective

#: Config name -> Objective subclass.
OBJECTIVES: dict[str, type[Objective]] = {
    "dpo": DPOObjective,
    "mixdpo": MixDPOObjective,
    "corrected_dpo": CorrectedDPOObjective,
    "agreement": AgreementObjective,
    "group_dpo": GroupDPOObjective,
    "group_mixdpo": GroupMixDPOObjective,
}


@dataclass(frozen=True)
class ObjectiveSpec:
    """A checked choice of objective, not yet built.

    Attributes:
        name: the objective's name in :data:`OBJECTIVES`.
        cls: its class.
        settings: its ``Settings`` dataclass with every value checked.
    """

    name: str
    cls: type[Objective]
    settings: Any

    def build(self) -> Objective:
        """The objective these settings describe (a fresh module with fresh parameters)."""
        return self.cls.from_settings(self.settings)


def resolve_objective(name: str, **settings: Any) -> ObjectiveSpec:
    """Check the objective called ``name`` (one of :data:`OBJECTIVES`) and its settings, without
    building it.

    ``settings`` are the fields of the objective's ``Settings`` dataclass (the same names as in
    ``PreferenceConfig`` and the YAML recipes, e.g. ``strength``, ``strength_shape``,
    ``correction_alpha``); paper defaults apply to anything left out. An unknown name, a setting
    the objective does not use (e.g. ``strength_mu`` with ``strength="gamma"``) or a value out of
    range raises :class:`~pluralign.errors.ConfigError` naming it.
    """
    try:
        cls = OBJECTIVES[name]
    except KeyError:
        raise ConfigError(f"objective={name!r} is unknown; use one of "
                          f"{', '.join(sorted(OBJECTIVES))}") from None
    declared = {f.name for f in fields(cls.Settings)}
    unknown = sorted(set(settings) - declared)
    if unknown:
        readers = objective_settings()
        where = "; ".join(f"{u} is read by {', '.join(readers[u][3])}" for u in unknown
                          if u in readers)
        raise ConfigError(f"objective {name!r} does not use {', '.join(unknown)} (it takes "
                          f"{', '.join(sorted(declared))}"
                          + (f"; {where}" if where else "") + f"). {cls.hint}".rstrip())
    values = cls.Settings(**settings)
    check_settings(values)
    unused = sorted(set(settings) - cls.used(values))
    if unused:
        raise ConfigError(f"objective {name!r}{cls.choice(values)} does not use "
                          f"{', '.join(unused)}; remove it. {cls.hint}".rstrip())
    return ObjectiveSpec(name, cls, values)


def build_objective(name: str, **settings: Any) -> Objective:
    """Build the objective called ``name`` from its settings (:func:`resolve_objective`'s checks,
    then :meth:`ObjectiveSpec.build`).

    Example::

        objective = build_objective("mixdpo", strength="gamma")   # Gamma(k=2, λ=16.7), learnable
        loss = objective(margins).mean()
    """
    return resolve_objective(name, **settings).build()


def objective_settings() -> dict[str, tuple[Any, Any, str, list[str]]]:
    """Every setting some registered objective declares: name -> (type, default, help, users).

    One entry per name (``beta`` is shared by several objectives); ``users`` lists the objectives
    that declare it. ``PreferenceConfig`` builds its objective fields from this.
    """
    out: dict[str, tuple[Any, Any, str, list[str]]] = {}
    for name, cls in OBJECTIVES.items():
        hints = get_type_hints(cls.Settings)
        for f in fields(cls.Settings):
            entry = out.setdefault(f.name, (hints[f.name], f.default, f.metadata["help"], []))
            entry[3].append(name)
    return out
