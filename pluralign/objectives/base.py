"""What every objective is: a module with per-pair losses, its settings and the columns it reads.

An objective is an ``nn.Module`` (it may own learnable strength parameters that the optimiser must
see) with ``forward(margin, batch=None) -> per-pair loss`` and ``metrics() -> dict[str, float]``.
Each registered objective declares what it is built from: ``Settings``, a dataclass of
:func:`setting` fields (name, type, default, help, valid values), and ``from_settings``; and what
its batches must carry: :meth:`Objective.columns`, which the trainer reads for every objective.
The registry that names them is :mod:`pluralign.objectives.registry`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from pluralign.errors import ConfigError
from pluralign.validation import POSITIVE, check_number


def setting(default: Any, help: str, *, rule: Mapping[str, Any] | None = None,
            choices: tuple[str, ...] | None = None, required: bool = False) -> Any:
    """A dataclass field for an objective setting: its default, its help and its valid values.

    ``rule`` is a :func:`~pluralign.validation.check_number` rule (``POSITIVE``, ``COUNT``, ...;
    ``{}`` for any finite number) that the value must meet, ``choices`` the strings it may take;
    None passes only for a setting whose default is None, unless ``required`` (a setting the
    objective has no default for). All
    are checked by :func:`check_settings` before anything is built, with a message naming the
    setting. ``PreferenceConfig`` derives its objective fields (same name, same help) from these.
    """
    return field(default=default, metadata={"help": help, "rule": rule, "choices": choices,
                                            "required": required})


def beta_setting() -> Any:
    """The ``beta`` setting shared by the objectives with a fixed preference strength."""
    return setting(0.1, "Preference strength beta of the log-ratio reward (paper: 0.1).",
                   rule=POSITIVE)


def check_settings(settings: Any) -> None:
    """Raise :class:`ConfigError` naming the first setting of ``settings`` outside its valid values.

    These checks cover everything an objective's constructor would refuse for values that pass
    them, so a config is validated without building any module (tested against the builders).
    """
    for f in fields(settings):
        value, meta = getattr(settings, f.name), f.metadata
        if value is None and meta.get("required"):
            raise ConfigError(f"{f.name} must be set: {meta['help']}")
        if value is None and f.default is None:  # an optional setting left unset
            continue
        if f.type in ("str", "str | None") and not isinstance(value, str):
            raise ConfigError(f"{f.name}={value!r} is invalid; it must be text: {meta['help']}")
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{f.name}={value!r} is unknown; use one of "
                              f"{', '.join(meta['choices'])}")
        if meta.get("rule") is not None:
            check_number(value, f.name, **meta["rule"])


@dataclass(frozen=True)
class Column:
    """A per-pair column that an objective's ``forward`` reads from its batch.

    Attributes:
        name: the batch key; the trainer keeps this numeric dataset column, collates it and
            refuses data without it.
        ids: the column holds integer ids ``0..K−1`` (groups, annotators, ...); the trainer counts
            the training split's pairs per id and tells the objective
            (:meth:`Objective.set_ids`).
        ids_from: with ``ids``, what defines a pair's id: ``attr.<name>``, ``ctx.<name>`` or a
            column (the grammar of :mod:`pluralign.data.groups`). The trainer builds the column
            from it on the training split and maps the evaluation split through the training
            split's name table, so ids agree. None: the data carry the column already.
        whole: with ``ids``, every batch must hold whole groups of this column (an annotator's
            pairs together, for a likelihood that couples them): the trainer batches with
            :class:`~pluralign.training.sampler.WholeGroupBatchSampler`, and each split gets its
            own ids (the groups are only ever compared within a batch, so evaluation annotators
            need not appear in training).
    """

    name: str
    ids: bool = False
    ids_from: str | None = None
    whole: bool = False

    def __post_init__(self) -> None:
        if self.ids_from is not None and not self.ids:
            raise ConfigError(f"column {self.name!r}: ids_from={self.ids_from!r} needs ids=True")
        if self.whole and not self.ids:
            raise ConfigError(f"column {self.name!r}: whole=True needs ids=True")


class Objective(nn.Module):
    """A per-pair preference loss with optional learnable state.

    Subclasses implement ``forward(margin, batch=None) -> Tensor`` (per-pair losses, same shape as
    ``margin``) and ``metrics() -> dict[str, float]`` (what the trainer logs every step).
    ``batch`` carries the per-pair columns the objective declares in :meth:`columns`.

    Each registered subclass declares what it is built from: ``Settings`` (a dataclass of
    :func:`setting` fields) and ``from_settings``; :meth:`used` names the settings a given choice
    reads (MixDPO's depend on its strength family).
    """

    Settings: type = object
    #: Appended to the error for a setting this objective does not use.
    hint: str = ""

    @classmethod
    def from_settings(cls, settings: Any) -> Objective:
        raise NotImplementedError

    @classmethod
    def used(cls, settings: Any) -> set[str]:
        """Names of the settings this objective reads for ``settings`` (default: all)."""
        return {f.name for f in fields(settings)}

    @classmethod
    def choice(cls, settings: Any) -> str:
        """The choice that decides :meth:`used`, for error messages (default: none)."""
        return ""

    def columns(self) -> tuple[Column, ...]:
        """The per-pair columns ``forward``'s batch must carry (default: none).

        The trainer asks every objective this, builds the id columns it derives, checks that the
        data have the rest and keeps them all in the batches."""
        return ()

    def set_ids(self, column: str, counts: Sequence[int], names: Sequence[str] | None) -> None:
        """Hear, for an id column of :meth:`columns`, the training split's pairs per id.

        ``counts[i]`` is the number of training pairs with id ``i``; ``names[i]`` the value that
        defines id ``i`` when the trainer derived the column (``ids_from``), else None. Called by
        the trainer before training; objectives that need nothing from it keep this default.
        """

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        raise NotImplementedError


def upcast(margin: Tensor) -> Tensor:
    """``margin`` in at least float32 (half-precision margins are upcast, float32/64 kept)."""
    return margin if margin.dtype in (torch.float32, torch.float64) else margin.float()
