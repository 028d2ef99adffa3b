"""What every loader format declares: a :class:`Format` (detection rule, Hub ids, how it loads a
local and a Hub source) and an options dataclass derived from :class:`LoaderOptions`.

An options dataclass is the loader's whole vocabulary: its fields are the keys of ``data.options``
(and the keyword arguments of :func:`pluralign.data.load_preferences`), documented in an
``Attributes:`` docstring section that ``--help`` prints with each field's type and default.
Building one checks every value: a ``bool`` field takes only true/false, a ``str`` field only text,
and each format's ``__post_init__`` checks the rest, so a bad option fails with one line naming it
before anything is read.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import datasets

from pluralign.errors import ConfigError
from pluralign.validation import COUNT, check_names, check_number

#: What a loader returns: schema columns (``dict`` of lists), a ``Dataset`` (already in the
#: schema, or remapped by the generic options), or generic records (``list`` of ``dict``).
Loaded = dict[str, list[Any]] | datasets.Dataset | list[dict[str, Any]]


@dataclass
class LoaderOptions:
    """Options every format takes.

    Attributes:
        split: split to read where the source has several (HH-RLHF files, a DatasetDict folder,
            Hub datasets); a local source with a single split takes only 'train'.
        limit: read at most this many pairs (reading stops early where possible).
        attributes: keep only these annotator attribute keys (a name or a list of names).
    """

    #: How error messages name the format (``PRISM min_score_gap=...``); empty: no prefix.
    LABEL: ClassVar[str] = ""

    split: str | None = None
    limit: int | None = None
    attributes: list[str] | None = None

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            name = f"{self.LABEL} {f.name}" if self.LABEL else f.name
            _check_type(hints[f.name], getattr(self, f.name), name)
        if self.limit is not None:
            self.limit = check_number(self.limit, "limit", **COUNT)
        if self.attributes is not None:
            self.attributes = check_names(self.attributes, "attributes")

    def single_split(self, fmt: str) -> None:
        """Refuse a ``split`` other than ``train`` for a local source that has just one."""
        if self.split not in (None, "train"):
            raise ConfigError(f"split={self.split!r}: a local {fmt} source has a single split")


@dataclass
class ChatOptions(LoaderOptions):
    """Options of the real-dataset formats, whose prompts are conversations.

    Attributes:
        chat: prompt and responses as chat messages (TRL's conversational format) instead of
            transcript text ("\\n\\nHuman: ...\\n\\nAssistant:"; :mod:`pluralign.data.readers`).
    """

    chat: bool = False


def _check_type(hint: Any, value: Any, name: str) -> None:
    """Refuse a non-boolean for a ``bool`` option and a non-text value for a ``str`` option."""
    if value is None:
        return
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be true or false")
    args = set(typing.get_args(hint)) - {type(None)} or {hint}
    if args == {str} and not (isinstance(value, str) and value):
        raise ConfigError(f"{name}={value!r} is invalid; use a text value")


@dataclass(frozen=True)
class Format:
    """One loader format, as registered in :data:`pluralign.data.formats.REGISTRY`.

    Attributes:
        name: the ``format`` value that selects it.
        options: its options dataclass (a :class:`LoaderOptions` subclass).
        rule: the detection rule in words (module docstrings, error messages).
        detect: ``detect(path)`` is True when the existing local file or folder ``path`` is in
            this format; formats are asked in registry order, the first yes wins.
        load_local: ``load_local(path, options)`` reads a local source.
        load_hub: ``load_hub(hub_id, options)`` reads a Hugging Face Hub dataset (network).
        hub_ids: Hub ids detected as this format.
    """

    name: str
    options: type[LoaderOptions]
    rule: str
    detect: Callable[[Path], bool]
    load_local: Callable[[Path, Any], Loaded]
    load_hub: Callable[[str, Any], Loaded]
    hub_ids: tuple[str, ...] = ()

    def build_options(self, options: Mapping[str, Any], where: str = "") -> LoaderOptions:
        """``options`` checked against :attr:`options`: an unknown key or a bad value raises
        :class:`ConfigError` in one line naming it (and ``where`` the mapping came from, e.g.
        ``data.options``)."""
        name = where or "options"
        names = [f.name for f in dataclasses.fields(self.options)]
        unknown = sorted(str(k) for k in options if k not in names)
        if unknown:
            raise ConfigError(f"{name} {unknown} do not apply to format {self.name!r}; it takes "
                              f"{', '.join(names)}")
        try:
            return self.options(**options)
        except ConfigError as exc:
            if not where:
                raise
            raise ConfigError(f"{where}: {exc}") from None
