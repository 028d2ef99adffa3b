"""The generic formats ``jsonl``, ``csv`` and ``parquet``: files whose records carry (mappable)
``prompt``/``chosen``/``rejected`` columns, and the options they share with ``hf``.

Records are mapped onto the schema by :func:`standardise`: ``column_map`` renames source columns
(schema name -> source column, e.g. ``{"prompt": "question", "annotator_id": "user"}``),
``attribute_columns`` / ``context_columns`` pack source columns into ``attributes`` / ``context``,
and every other column is kept as an extra column. ``annotator_id`` may be missing (anonymous
data); a missing ``item_id`` becomes the row number. Each row is type-checked, naming the row and
field of the first problem. A ``.parquet`` file (or a saved synthetic population folder, which
holds ``pairs.parquet``) is read as Arrow and stays in the schema unless an option remaps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from pluralign.data.formats.base import Format, LoaderOptions
from pluralign.data.readers import iter_jsonl, read_csv
from pluralign.data.schema import (
    COLUMNS,
    REQUIRED_COLUMNS,
    dataset_from_table,
    decode_mapping,
    encode_mapping,
    schema_error,
)
from pluralign.errors import ConfigError
from pluralign.validation import check_names

#: File name of the dataset in a saved synthetic population folder.
POPULATION_PAIRS = "pairs.parquet"
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")


@dataclass
class GenericOptions(LoaderOptions):
    """Options of the generic formats (jsonl, csv, parquet) and of hf.

    Attributes:
        column_map: schema column -> source column, e.g. {prompt: question, annotator_id: user}.
        attribute_columns: source columns packed into ``attributes`` (annotator demographics).
        context_columns: source columns packed into ``context`` (conditions of the comparison).
    """

    column_map: dict[str, str] | None = None
    attribute_columns: list[str] | None = None
    context_columns: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.column_map is not None:
            if not (isinstance(self.column_map, Mapping)
                    and all(isinstance(v, str) for v in self.column_map.values())):
                raise ConfigError(f"column_map={self.column_map!r} is invalid; use a mapping "
                                  "schema column -> source column, e.g. {prompt: question, "
                                  "annotator_id: user}")
            unknown = set(self.column_map) - set(COLUMNS)
            if unknown:
                raise ConfigError(f"column_map keys must be schema columns {COLUMNS}, "
                                  f"got {sorted(map(str, unknown))}")
        for name in ("attribute_columns", "context_columns"):
            if getattr(self, name) is not None:
                setattr(self, name, check_names(getattr(self, name), name))

    def remaps(self) -> bool:
        """True when records must be mapped onto the schema row by row."""
        return any(v is not None for v in (self.column_map, self.attribute_columns,
                                           self.context_columns))


def _mapping_cell(value: Any, packed: tuple[tuple[str, Any], ...], source: str, row: int,
                  field: str) -> str:
    """One ``attributes``/``context`` cell: a JSON string or dict, plus packed source columns."""
    if isinstance(value, str):
        try:
            value = decode_mapping(value)
        except ValueError as exc:
            raise schema_error(source, row, field, f"not a JSON object ({exc})") from exc
    elif value is not None and not isinstance(value, dict):
        raise schema_error(source, row, field,
                           f"must be a mapping of str -> str, got {type(value).__name__}")
    merged = {**(value or {}), **dict(packed)}
    for key, item in merged.items():
        if isinstance(item, (list, tuple, dict)):
            raise schema_error(source, row, field,
                               f"key {key!r} holds a {type(item).__name__} ({item!r:.40}); "
                               "values are single strings or numbers: join the items into one "
                               "string (e.g. 'en;fr') or give each its own key")
    return encode_mapping(merged)


def standardise(records: list[dict[str, Any]], source: str, options: GenericOptions
                ) -> dict[str, list[Any]]:
    """Generic records -> schema columns, with per-row type checks naming the row and field."""
    mapping = {name: name for name in COLUMNS}
    mapping.update(options.column_map or {})
    packs: dict[str, Iterable[str]] = {"attributes": options.attribute_columns or [],
                                       "context": options.context_columns or []}
    present = set(records[0]) if records else set()
    for name in REQUIRED_COLUMNS:
        if mapping[name] not in present:
            raise schema_error(source, 0 if records else None, mapping[name],
                               f"missing column for '{name}'; found {sorted(present)}. Use "
                               f"column_map={{'{name}': 'your_column'}}")
    taken = {mapping[c] for c in COLUMNS} | {c for cols in packs.values() for c in cols}
    extra = [c for c in records[0] if c not in taken] if records else []
    columns: dict[str, list[Any]] = {c: [] for c in (*COLUMNS, *extra)}
    cache: dict[Any, str] = {}
    for row, rec in enumerate(records):
        for name in REQUIRED_COLUMNS:
            if mapping[name] not in rec:
                raise schema_error(source, row, mapping[name], "missing field")
            value = rec[mapping[name]]
            if not isinstance(value, (str, list)):
                raise schema_error(source, row, mapping[name],
                                   f"must be a string or a list of chat messages, got "
                                   f"{type(value).__name__}")
            columns[name].append(value)
        annotator = rec.get(mapping["annotator_id"])
        columns["annotator_id"].append(None if annotator in (None, "") else str(annotator))
        for name in ("attributes", "context"):
            value = rec.get(mapping[name])
            packed = tuple((c, rec.get(c)) for c in packs[name] if rec.get(c) not in (None, ""))
            try:  # rows share few distinct mappings: encode each once
                key = (value if not isinstance(value, dict) else tuple(value.items()), packed)
                encoded = cache.get(key)
            except TypeError:  # unhashable values inside the mapping
                key, encoded = None, None
            if encoded is None:
                encoded = _mapping_cell(value, packed, source, row, mapping[name])
                if key is not None:
                    cache[key] = encoded
            columns[name].append(encoded)
        item = rec.get(mapping["item_id"])
        columns["item_id"].append(str(row) if item in (None, "") else str(item))
        for c in extra:
            columns[c].append(rec.get(c))
    return columns


def load_hub_dataset(source: str, options: LoaderOptions) -> datasets.Dataset:
    """A Hub dataset's ``split`` (default ``train``), as it is."""
    return datasets.load_dataset(source, split=options.split or "train")


def _load_jsonl(path: Path, options: GenericOptions) -> list[dict[str, Any]]:
    options.single_split("jsonl")
    return [rec for _, rec in iter_jsonl(path)]


def _load_csv(path: Path, options: GenericOptions) -> list[dict[str, Any]]:
    options.single_split("csv")
    frame = read_csv(path)
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict("records")


def _load_parquet(path: Path, options: GenericOptions) -> datasets.Dataset:
    options.single_split("parquet")
    path = path / POPULATION_PAIRS if path.is_dir() else path
    try:
        return dataset_from_table(pq.read_table(path))
    except (OSError, pa.ArrowException) as exc:
        raise schema_error(str(path), None, None, f"unreadable Parquet file ({exc})") from exc


def _is_file(*suffixes: str):
    def detect(path: Path) -> bool:
        return path.is_file() and path.name.lower().endswith(suffixes)
    return detect


def _is_parquet(path: Path) -> bool:
    return _is_file(".parquet")(path) or (path.is_dir() and (path / POPULATION_PAIRS).is_file())


JSONL = Format("jsonl", GenericOptions, "any other .jsonl(.gz) or .json file",
               _is_file(*JSONL_SUFFIXES), _load_jsonl, load_hub_dataset)
CSV = Format("csv", GenericOptions, "any other .csv file", _is_file(".csv"), _load_csv,
             load_hub_dataset)
PARQUET = Format("parquet", GenericOptions,
                 "a .parquet file, or a saved synthetic population folder (pairs.parquet)",
                 _is_parquet, _load_parquet, load_hub_dataset)
