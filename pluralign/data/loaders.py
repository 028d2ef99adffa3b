"""One entry point for every preference source: :func:`load_preferences`.

=======================  ======================================================================
format                   source
=======================  ======================================================================
``prism``                folder with ``conversations.jsonl`` + ``survey.jsonl`` (:mod:`.prism`)
``community_alignment``  the release CSV (:mod:`.community_alignment`)
``hh_rlhf``              ``.jsonl(.gz)`` file, subset folder or root folder (:mod:`.hh_rlhf`)
``jsonl`` / ``csv`` /    generic files with (mappable) ``prompt``/``chosen``/``rejected`` columns
``parquet``
``hf``                   an in-memory :class:`datasets.Dataset`, a ``save_to_disk`` folder, or a
                         Hub id
=======================  ======================================================================

With ``format=None`` the format is detected from the source: a folder with ``conversations.jsonl``
and ``survey.jsonl`` is PRISM, a folder of ``train/test.jsonl(.gz)`` files (or of subset folders
holding them) is HH-RLHF, a CSV whose header has ``first_turn_preferred_response`` is Community
Alignment, a JSON Lines file whose first record has exactly ``chosen``/``rejected`` transcripts
starting with ``"\\n\\nHuman:"`` is HH-RLHF, other ``.jsonl``/``.csv``/``.parquet`` files are
generic, a ``Dataset`` or a ``save_to_disk`` folder (e.g. from
:func:`~pluralign.data.export.export_preferences`) is ``hf``. A string that looks like a local path
(:func:`looks_local`) but does not exist is an error naming it; any other string is a Hub id: the
three known ids map to their formats, others are ``hf``; only then is ``datasets.load_dataset``
called (needs network; tests never do this).

Common options: ``split`` (HH files and Hub datasets), ``limit`` (at most this many pairs),
``attributes`` (keep only these annotator attributes), ``chat`` (prompt/responses as chat
messages instead of transcript text; real-dataset formats). Generic formats also take
``column_map`` (schema name -> source column, e.g. ``{"prompt": "question", "annotator_id":
"user"}``), ``attribute_columns`` and ``context_columns`` (source columns packed into
``attributes`` / ``context``). Format-specific options are listed in :data:`FORMAT_OPTIONS`.
Every result passes :func:`~pluralign.data.schema.validate`; every skipped row is counted in the
``pluralign.data.loaders`` log.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pluralign.data.community_alignment import community_alignment_pairs
from pluralign.data.hh_rlhf import PREFERENCE_SUBSETS, hh_pairs, load_hh_folder
from pluralign.data.prism import prism_pairs
from pluralign.data.readers import iter_jsonl
from pluralign.data.schema import (
    COLUMNS,
    REQUIRED_COLUMNS,
    column_array,
    dataset_from_table,
    decode_mapping,
    encode_mapping,
    schema_error,
    validate,
)
from pluralign.errors import ConfigError
from pluralign.validation import COUNT, check_names, check_number

logger = logging.getLogger("pluralign.data.loaders")

FORMATS = ("prism", "community_alignment", "hh_rlhf", "jsonl", "csv", "parquet", "hf")
HUB_FORMATS = {"HannahRoseKirk/prism-alignment": "prism",
               "facebook/community-alignment-dataset": "community_alignment",
               "Anthropic/hh-rlhf": "hh_rlhf"}
_GENERIC_OPTIONS = ("column_map", "attribute_columns", "context_columns")
FORMAT_OPTIONS: dict[str, tuple[str, ...]] = {
    "prism": ("pairs", "min_score_gap", "chat"),
    "community_alignment": ("language", "first_turn_only", "pregenerated_only", "chat"),
    "hh_rlhf": ("subsets", "chat"),
    "jsonl": _GENERIC_OPTIONS, "csv": _GENERIC_OPTIONS, "parquet": _GENERIC_OPTIONS,
    "hf": _GENERIC_OPTIONS,
}
POPULATION_PAIRS = "pairs.parquet"  # file name of the dataset in a saved synthetic population
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
#: suffixes that mark a source string as a local file, never a Hub id.
LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet", ".sav", ".dta", ".arrow",
                  ".gz")


def _first_jsonl_record(path: Path) -> dict[str, Any] | None:
    return next((rec for _, rec in iter_jsonl(path)), None)


def _is_hh_record(record: dict[str, Any] | None) -> bool:
    return (record is not None and set(record) == {"chosen", "rejected"}
            and isinstance(record["chosen"], str) and record["chosen"].startswith("\n\nHuman:"))


def _has_hh_files(folder: Path) -> bool:
    names = ("train.jsonl.gz", "test.jsonl.gz", "train.jsonl", "test.jsonl")
    return any((folder / n).is_file() for n in names) or any(
        (folder / s / n).is_file() for s in PREFERENCE_SUBSETS for n in names)


def detect_format(source: Any) -> str:
    """The format :func:`load_preferences` would use for ``source`` (see the module docstring)."""
    if isinstance(source, datasets.Dataset):
        return "hf"
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir():
        if (path / "conversations.jsonl").is_file() and (path / "survey.jsonl").is_file():
            return "prism"
        if _has_hh_files(path):
            return "hh_rlhf"
        if (path / POPULATION_PAIRS).is_file():
            return "parquet"
        if _is_saved_dataset(path):
            return "hf"
        raise schema_error(str(path), None, None,
                           "folder is neither a PRISM release (conversations.jsonl + survey.jsonl)"
                           ", HH-RLHF (train/test.jsonl.gz), a saved synthetic population "
                           "(pairs.parquet) nor a Dataset.save_to_disk folder; pass format=... "
                           "explicitly")
    if path.is_file():
        name = path.name.lower()
        if name.endswith(".parquet"):
            return "parquet"
        if name.endswith(".csv"):
            header = _read_header(path)
            return "community_alignment" if "first_turn_preferred_response" in header else "csv"
        if name.endswith((".jsonl", ".jsonl.gz", ".json")):
            return "hh_rlhf" if _is_hh_record(_first_jsonl_record(path)) else "jsonl"
        raise schema_error(str(path), None, None,
                           "unknown file type; use .jsonl, .jsonl.gz, .csv or .parquet, or pass "
                           "format=...")
    if str(source) in HUB_FORMATS:
        return HUB_FORMATS[str(source)]
    if _HUB_ID.match(str(source)):
        return "hf"
    raise schema_error(str(source), None, None, "no such file or folder (and not a Hub id)")


def looks_local(source: str | os.PathLike[str]) -> bool:
    """True when ``source`` names a local path rather than a Hub id: it starts with ``./``,
    ``../``, ``/`` or ``~``, ends with a data-file suffix (:data:`LOCAL_SUFFIXES`), exists, or its
    first path component exists."""
    text = os.fspath(source)
    if text.startswith(("./", "../", "/", "~", ".\\", "..\\")) or os.path.isabs(text):
        return True
    if text.lower().endswith(LOCAL_SUFFIXES) or Path(text).exists():
        return True
    parts = Path(text).parts
    return len(parts) > 1 and Path(parts[0]).exists()


def _check_exists(source: Any) -> None:
    """A local-looking source that does not exist is an error naming it, never a Hub call."""
    if isinstance(source, datasets.Dataset) or not looks_local(source):
        return
    path = Path(os.fspath(source)).expanduser()
    if not path.exists():
        raise schema_error(str(source), None, None,
                           f"no such file or folder (resolved to {path.resolve()}); it looks like "
                           "a local path, so it is not looked up on the Hugging Face Hub")


def _is_saved_dataset(folder: Path) -> bool:
    """A ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folder."""
    return ((folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()) \
        or (folder / "dataset_dict.json").is_file()


def _load_from_disk(path: Path, split: str | None) -> datasets.Dataset:
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError) as exc:
        raise schema_error(str(path), None, None, f"unreadable save_to_disk folder ({exc})") \
            from exc
    if isinstance(loaded, datasets.DatasetDict):
        name = split or "train"
        if name not in loaded:
            raise ConfigError(f"{path}: no split {name!r}; splits: {list(loaded)}")
        return loaded[name]
    if split not in (None, "train"):
        raise ConfigError(f"split={split!r}: {path} holds a single Dataset")
    return loaded


def _read_header(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise schema_error(str(path), None, None, f"unreadable file ({exc})") from exc


def _is_local(source: Any) -> bool:
    return isinstance(source, datasets.Dataset) or Path(os.fspath(source)).expanduser().exists()


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""])
    except (OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise schema_error(str(path), None, None, f"unreadable CSV file ({exc})") from exc


def _records_from_file(path: Path, fmt: str) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        return [rec for _, rec in iter_jsonl(path)]
    frame = _read_csv(path)
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.to_dict("records")


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
    return encode_mapping({**(value or {}), **dict(packed)})


def _standardise(records: list[dict[str, Any]], source: str, column_map: dict[str, str] | None,
                 attribute_columns: Iterable[str] | None, context_columns: Iterable[str] | None
                 ) -> dict[str, list[Any]]:
    """Generic records -> schema columns, with per-row type checks naming the row and field."""
    mapping = {name: name for name in COLUMNS}
    mapping.update(column_map or {})
    unknown = set(column_map or {}) - set(COLUMNS)
    if unknown:
        raise ConfigError(f"column_map keys must be schema columns {COLUMNS}, "
                          f"got {sorted(unknown)}")
    packs = {"attributes": list(attribute_columns or []), "context": list(context_columns or [])}
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


def _select_attributes(ds: datasets.Dataset, keep: Iterable[str]) -> datasets.Dataset:
    """Only the wanted keys of ``attributes`` (``ds`` is validated: the column is a struct)."""
    struct = column_array(ds, "attributes").combine_chunks()
    names = [f.name for f in struct.type if f.name in set(keep)]
    kept = (pa.StructArray.from_arrays([struct.field(n) for n in names], names=names) if names
            else pa.array([{}] * len(struct), type=pa.struct([])))
    table = ds.data.table.set_column(ds.column_names.index("attributes"), "attributes", kept)
    return dataset_from_table(table.replace_schema_metadata(None))


def _check_options(fmt: str, options: dict[str, Any]) -> None:
    unknown = set(options) - set(FORMAT_OPTIONS[fmt])
    if unknown:
        raise ConfigError(f"options {sorted(unknown)} do not apply to format {fmt!r}; it takes "
                          f"{list(FORMAT_OPTIONS[fmt])} plus split, limit, attributes")


def _load_hub(source: str, fmt: str, split: str | None, options: dict[str, Any],
              limit: int | None) -> dict[str, list[Any]] | datasets.Dataset:
    if fmt == "prism":
        conversations = datasets.load_dataset(source, "conversations", split="train")
        survey = datasets.load_dataset(source, "survey", split="train")
        return prism_pairs(enumerate(conversations), {r["user_id"]: r for r in survey}, source,
                           limit=limit, **options)
    if fmt == "community_alignment":
        frame = datasets.load_dataset(source, split=split or "train").to_pandas()
        return community_alignment_pairs(frame, source, limit=limit, **options)
    if fmt == "hh_rlhf":
        subsets = options.pop("subsets", None) or [None]
        columns = None
        for subset in subsets:
            rows = datasets.load_dataset(source, data_dir=subset, split=split or "train")
            columns = hh_pairs(enumerate(rows), source, subset, split or "train", limit=limit,
                               columns=columns, **options)
        return columns
    return datasets.load_dataset(source, split=split or "train")


def _read_parquet(path: Path) -> datasets.Dataset:
    try:
        return dataset_from_table(pq.read_table(path))
    except (OSError, pa.ArrowException) as exc:
        raise schema_error(str(path), None, None, f"unreadable Parquet file ({exc})") from exc


def _load_local(source: Any, fmt: str, split: str | None, options: dict[str, Any],
                limit: int | None) -> dict[str, list[Any]] | datasets.Dataset | list[Any]:
    if isinstance(source, datasets.Dataset):
        return source
    path = Path(os.fspath(source)).expanduser()
    if fmt == "hf":
        return _load_from_disk(path, split)
    if fmt == "parquet":  # Arrow-native; a saved population folder reads its pairs.parquet
        return _read_parquet(path / POPULATION_PAIRS if path.is_dir() else path)
    if fmt == "hh_rlhf":
        return load_hh_folder(path, split, options.pop("subsets", None), limit=limit, **options)
    if split not in (None, "train"):
        raise ConfigError(f"split={split!r}: a local {fmt} source has a single split")
    if fmt == "prism":
        survey = {rec.get("user_id"): rec for _, rec in iter_jsonl(path / "survey.jsonl")}
        return prism_pairs(iter_jsonl(path / "conversations.jsonl"), survey, str(path),
                           limit=limit, **options)
    if fmt == "community_alignment":
        return community_alignment_pairs(_read_csv(path), str(path), limit=limit, **options)
    return _records_from_file(path, fmt)


def load_preferences(source: str | os.PathLike[str] | datasets.Dataset, format: str | None = None,
                     *, split: str | None = None, limit: int | None = None,
                     attributes: Iterable[str] | None = None, **options: Any) -> datasets.Dataset:
    """Load preference pairs from any supported source into the schema (see module docstring).

    Args:
        source: local file/folder, an in-memory ``Dataset``, or a Hub id.
        format: one of :data:`FORMATS`; detected when None.
        split: file/split to read where the source has several (HH-RLHF, Hub datasets).
        limit: return at most this many pairs (reading stops early where possible).
        attributes: keep only these annotator attribute keys.
        **options: format-specific options (:data:`FORMAT_OPTIONS`).

    Raises:
        SchemaError: unreadable or malformed source (names the source, row and field).
        ConfigError: unknown format or option.
    """
    _check_exists(source)
    if format is None:
        format = detect_format(source)
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; use one of {FORMATS}")
    _check_options(format, options)
    if limit is not None:
        limit = check_number(limit, "limit", **COUNT)
    name = "<in-memory dataset>" if isinstance(source, datasets.Dataset) else str(source)
    generic = {k: options.pop(k, None) for k in _GENERIC_OPTIONS}
    column_map = generic["column_map"]
    if column_map is not None and not (
            isinstance(column_map, Mapping)
            and all(isinstance(v, str) for v in column_map.values())):
        raise ConfigError(f"column_map={column_map!r} is invalid; use a mapping schema column -> "
                          "source column, e.g. {prompt: question, annotator_id: user}")
    for key in ("attribute_columns", "context_columns"):
        if generic[key] is not None:
            generic[key] = check_names(generic[key], key)
    if attributes is not None:
        attributes = check_names(attributes, "attributes")
    if _is_local(source):
        loaded = _load_local(source, format, split, options, limit)
    else:
        loaded = _load_hub(str(source), format, split, options, limit)
    if isinstance(loaded, datasets.Dataset):
        if limit:
            loaded = loaded.select(range(min(limit, len(loaded))))
        # a dataset already in the schema stays in Arrow; otherwise map/pack row by row
        loaded = loaded.to_list() if any(v is not None for v in generic.values()) else loaded
    if isinstance(loaded, list):
        loaded = _standardise(loaded[:limit] if limit else loaded, name, **generic)
    if isinstance(loaded, dict):
        if not loaded["prompt"]:
            raise schema_error(name, None, None, "no preference pairs left; see the "
                               "pluralign.data.loaders log for the rows that were dropped")
        loaded = datasets.Dataset.from_dict(loaded)
    dataset = loaded
    if attributes is not None:
        dataset = _select_attributes(validate(dataset, source=name), attributes)
    return validate(dataset, source=name)
