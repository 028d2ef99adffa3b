"""Integer group ids per pair from a column, for group-robust objectives and worst-group metrics.

``group_by`` names what defines a pair's group:

* ``attr.<name>`` — an annotator attribute (e.g. ``attr.age``) from the ``attributes`` mapping;
* ``ctx.<name>`` — a context field (e.g. ``ctx.conversation_type``) from the ``context`` mapping;
* any other column — ``annotator_id`` (each annotator its own group), a column of annotator
  clusters, a synthetic population's latent ``type_id``, a PAL-inferred type, ...

Values are mapped to ids ``0..K−1`` in sorted order of their text (or in the order of a given
``names`` table, so a held-out split gets the same ids as the training split); integer values
sort numerically. Missing values
(None, NaN, empty text, an absent mapping key) raise :class:`~pluralign.data.SchemaError` naming
the first such row by default; ``missing="unknown"`` puts them into one extra group called
:data:`UNKNOWN` instead (appended last to the name table). A value not in a given ``names`` table
is an error too, or ``UNKNOWN`` with ``missing="unknown"`` when the table has that group.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import numpy as np

from pluralign.data.schema import decode_mapping, schema_error
from pluralign.errors import ConfigError

#: Name of the group that collects missing values with ``missing="unknown"``.
UNKNOWN = "<unknown>"
_MAPPINGS = {"attr.": "attributes", "ctx.": "context"}


@dataclass(frozen=True)
class GroupIds:
    """Group id of every pair and the name table (``names[id]`` is the group's value as text)."""

    ids: np.ndarray
    names: list[str]
    group_by: str

    def counts(self) -> np.ndarray:
        """Pairs per group, in id order (``len(names)`` entries, zeros included)."""
        return np.bincount(self.ids, minlength=len(self.names))


def _natural(text: str) -> tuple[int, int, str]:
    """Integers in numeric order (type ids 2 < 10), then other text alphabetically."""
    stripped = text.lstrip("-")
    return (0, int(text), "") if stripped.isdigit() else (1, 0, text)


def _raw_values(dataset: datasets.Dataset, group_by: str) -> list[str | None]:
    for prefix, column in _MAPPINGS.items():
        if group_by.startswith(prefix):
            if column not in dataset.column_names:
                raise schema_error("<dataset>", None, column,
                                   f"group_by={group_by!r} needs the {column!r} column")
            key = group_by[len(prefix):]
            cache: dict[str | None, str | None] = {}
            out, keys = [], set()
            for encoded in dataset[column]:
                # a struct column holds dicts (unhashable): cache on their JSON text
                text = encoded if encoded is None or isinstance(encoded, str) else \
                    json.dumps(encoded, sort_keys=True, default=str)
                if text not in cache:
                    mapping = decode_mapping(encoded)
                    keys.update(mapping)
                    cache[text] = mapping.get(key)
                out.append(cache[text])
            if out and all(v is None for v in out):
                raise schema_error("<dataset>", None, column,
                                   f"group_by={group_by!r}: no pair has {key!r}; use one of "
                                   f"{sorted(prefix + k for k in keys) or 'none (empty)'}")
            return out
    if group_by not in dataset.column_names:
        raise schema_error("<dataset>", None, group_by,
                           f"no such column for group_by; use 'attr.<name>', 'ctx.<name>' or one "
                           f"of {sorted(dataset.column_names)}")
    return [None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)
            for v in dataset[group_by]]


def group_ids(dataset: datasets.Dataset, group_by: str, *, names: Sequence[str] | None = None,
              missing: str = "error") -> GroupIds:
    """Map ``group_by`` (see the module docstring) to integer ids with a name table.

    Args:
        dataset: preference pairs (schema columns plus any extra per-pair columns).
        group_by: ``attr.<name>``, ``ctx.<name>`` or a column name.
        names: a fixed name table (e.g. the training split's); None builds it from the values.
        missing: ``"error"`` (default) or ``"unknown"`` (see the module docstring).
    """
    if missing not in ("error", "unknown"):
        raise ConfigError(f"missing must be 'error' or 'unknown', got {missing!r}")
    values = _raw_values(dataset, group_by)
    absent = [v is None or not str(v).strip() for v in values]
    if missing == "error" and any(absent):
        row = absent.index(True)
        raise schema_error("<dataset>", row, group_by,
                           f"no group value ({sum(absent)} rows lack one); fill it in or pass "
                           f"missing='unknown' to collect them in a {UNKNOWN!r} group")
    if names is not None:
        table = [str(n) for n in names]
    else:
        table = sorted({str(v) for v, a in zip(values, absent, strict=True) if not a},
                       key=_natural)
        if any(absent):
            table.append(UNKNOWN)
    index = {name: i for i, name in enumerate(table)}
    ids = np.empty(len(values), dtype=np.int64)
    for row, (v, a) in enumerate(zip(values, absent, strict=True)):
        key = UNKNOWN if a else str(v)
        if key not in index and missing == "unknown" and UNKNOWN in index:
            key = UNKNOWN
        if key not in index:
            raise schema_error("<dataset>", row, group_by,
                               f"value {v!r} is not in the group name table {table}")
        ids[row] = index[key]
    return GroupIds(ids=ids, names=table, group_by=group_by)


def add_group_column(dataset: datasets.Dataset, group_by: str, column: str = "group", *,
                     names: Sequence[str] | None = None,
                     missing: str = "error") -> tuple[datasets.Dataset, GroupIds]:
    """``dataset`` with an int64 ``column`` of group ids (:func:`group_ids`) and the ids."""
    groups = group_ids(dataset, group_by, names=names, missing=missing)
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, groups.ids.tolist()), groups
