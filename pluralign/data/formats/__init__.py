"""The loader registry: one module per preference-data format, one line per format in
:data:`REGISTRY` (like the packaged modules of Hugging Face ``datasets``).

Each format module declares a :class:`~.base.Format`: its options dataclass (typed, documented
fields with the real datasets' defaults; the keys of ``data.options``, listed by ``--help``), its
detection rule, its Hub ids, and how it loads a local source and a Hub source.
:func:`pluralign.data.load_preferences` and the ``data:`` section
(:class:`pluralign.data.DataConfig`) read everything from here.

**Adding a format** is one new module and one registry line: write ``formats/<name>.py`` with an
options dataclass (a subclass of :class:`~.base.LoaderOptions`, or of
:class:`~.base.ChatOptions`) and ``FORMAT = Format(name, Options, rule, detect, load_local,
load_hub, hub_ids)``, then add ``<name>.FORMAT`` to :data:`REGISTRY`. Detection, option checking,
``--help`` and the error messages follow.

**Detection** (:func:`detect_format`; deterministic, in this order):

1. an in-memory :class:`datasets.Dataset` is ``hf``;
2. an existing local file or folder is the *first* format in :data:`REGISTRY` order whose rule
   accepts it (so PRISM and HH-RLHF folders win over a population folder, HH-RLHF JSON Lines over
   generic ones, Community Alignment CSVs over generic ones); none is an error naming the rules;
3. any other text is a Hub id: the format that lists it in ``hub_ids``, else ``hf``
   (:data:`HUB_DEFAULT`). A text that looks like a local path but does not exist is refused
   before this (:func:`pluralign.data.loaders.looks_local`), never looked up on the Hub.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import datasets

from pluralign.data.formats import community_alignment, generic, hf, hh_rlhf, prism
from pluralign.data.formats.base import ChatOptions, Format, LoaderOptions
from pluralign.data.schema import schema_error
from pluralign.errors import ConfigError

#: Every format, in detection order (see the module docstring).
REGISTRY: dict[str, Format] = {f.name: f for f in (
    prism.FORMAT,
    community_alignment.FORMAT,
    hh_rlhf.FORMAT,
    generic.JSONL,
    generic.CSV,
    generic.PARQUET,
    hf.FORMAT,
)}
FORMATS = tuple(REGISTRY)
#: The format of a Hub id that no format lists.
HUB_DEFAULT = "hf"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def get_format(name: Any, where: str = "") -> Format:
    """The registered format ``name``; else :class:`ConfigError` listing the formats (after
    ``where``, e.g. ``data.format``)."""
    if not isinstance(name, str) or name not in REGISTRY:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}unknown format {name!r}; use one of {tuple(REGISTRY)}")
    return REGISTRY[name]


def detect_format(source: Any) -> str:
    """The format :func:`pluralign.data.load_preferences` uses for ``source`` when none is
    given (see the module docstring for the precedence)."""
    if isinstance(source, datasets.Dataset):
        return "hf"
    path = Path(os.fspath(source)).expanduser()
    if path.exists():
        found = next((f.name for f in REGISTRY.values() if f.detect(path)), None)
        if found is None:
            rules = "; ".join(f"{f.name}: {f.rule}" for f in REGISTRY.values())
            kind = "folder" if path.is_dir() else "file"
            raise schema_error(str(path), None, None, f"this {kind} matches no format ({rules}); "
                               "pass format=... explicitly")
        return found
    text = str(source)
    claimed = next((f.name for f in REGISTRY.values() if text in f.hub_ids), None)
    if claimed is not None:
        return claimed
    if _HUB_ID.match(text):
        return HUB_DEFAULT
    raise schema_error(text, None, None, "no such file or folder (and not a Hub id)")


__all__ = ["FORMATS", "HUB_DEFAULT", "REGISTRY", "ChatOptions", "Format", "LoaderOptions",
           "detect_format", "get_format"]
