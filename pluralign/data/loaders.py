"""One entry point for every preference source: :func:`load_preferences`.

=======================  ======================================================================
format                   source
=======================  ======================================================================
``prism``                folder with ``conversations.jsonl`` + ``survey.jsonl``
                         (:mod:`~pluralign.data.formats.prism`)
``community_alignment``  the release CSV (:mod:`~pluralign.data.formats.community_alignment`)
``hh_rlhf``              ``.jsonl(.gz)`` file, subset folder or root folder
                         (:mod:`~pluralign.data.formats.hh_rlhf`)
``jsonl`` / ``csv`` /    generic files with (mappable) ``prompt``/``chosen``/``rejected`` columns
``parquet``              (:mod:`~pluralign.data.formats.generic`)
``hf``                   an in-memory :class:`datasets.Dataset`, a ``save_to_disk`` folder, or a
                         Hub id (:mod:`~pluralign.data.formats.hf`)
=======================  ======================================================================

The formats, their options dataclasses and the detection precedence (``format=None``) live in
the loader registry, :mod:`pluralign.data.formats`. A string that looks like a local path
(:func:`looks_local`) but does not exist is an error naming it; any other string that is not a
local path is a Hub id, and only then is ``datasets.load_dataset`` called (needs network; tests
never do this).

Options every format takes: ``split``, ``limit`` (at most this many pairs), ``attributes`` (keep
only these annotator attributes; a name the data does not have is an error listing those it
has); the real-dataset formats take ``chat`` (prompt/responses as chat messages instead of
transcript text); the generic formats ``column_map``,
``attribute_columns`` and ``context_columns``; see each format's options dataclass. Every result
passes :func:`~pluralign.data.schema.validate`; every skipped row is counted in the
``pluralign.data.loaders`` log.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from pluralign.data.formats import detect_format, get_format
from pluralign.data.formats.base import Loaded
from pluralign.data.formats.generic import GenericOptions, standardise
from pluralign.data.schema import column_array, dataset_from_table, schema_error, validate
from pluralign.errors import ConfigError

#: suffixes that mark a source string as a local file, never a Hub id.
LOCAL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet", ".sav", ".dta", ".arrow",
                  ".gz")


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


def _select_attributes(ds: datasets.Dataset, keep: Iterable[str]) -> datasets.Dataset:
    """Only the wanted keys of ``attributes`` (``ds`` is validated: the column is a struct)."""
    struct = column_array(ds, "attributes").combine_chunks()
    wanted = list(keep)
    available = [f.name for f in struct.type]
    unknown = [k for k in wanted if k not in available]
    if unknown:
        raise ConfigError(f"attributes={wanted}: {unknown} not among the data's attributes; "
                          f"available: {available}")
    names = [f.name for f in struct.type if f.name in set(wanted)]
    kept = (pa.StructArray.from_arrays([struct.field(n) for n in names], names=names) if names
            else pa.array([{}] * len(struct), type=pa.struct([])))
    table = ds.data.table.set_column(ds.column_names.index("attributes"), "attributes", kept)
    return dataset_from_table(table.replace_schema_metadata(None))


def _to_schema(loaded: Loaded, name: str, options: Any) -> datasets.Dataset:
    """A loader's result as a dataset: ``limit`` applied, generic records mapped onto the
    schema, column dicts built."""
    limit = options.limit
    remap = isinstance(options, GenericOptions) and options.remaps()
    if isinstance(loaded, datasets.Dataset):
        if limit:
            loaded = loaded.select(range(min(limit, len(loaded))))
        # a dataset already in the schema stays in Arrow; otherwise map/pack row by row
        if not remap:
            return loaded
        loaded = loaded.to_list()
    if isinstance(loaded, list):
        loaded = standardise(loaded[:limit] if limit else loaded, name,
                             options if isinstance(options, GenericOptions) else GenericOptions())
    if not loaded["prompt"]:
        raise schema_error(name, None, None, "no preference pairs left; see the "
                           "pluralign.data.loaders log for the rows that were dropped")
    try:
        return datasets.Dataset.from_dict(loaded)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        column = _mixed_column(loaded)
        raise schema_error(name, None, column,
                           f"its values mix types ({str(exc).splitlines()[0]}); give every "
                           "row the same kind of value (all objects or all scalars) or drop "
                           "the column") from None


def _mixed_column(columns: dict[str, list[Any]]) -> str | None:
    """The first column pyarrow cannot type as one array (None when each types alone)."""
    for key, values in columns.items():
        try:
            pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return key
    return None


def load_preferences(source: str | os.PathLike[str] | datasets.Dataset, format: str | None = None,
                     **options: Any) -> datasets.Dataset:
    """Load preference pairs from any supported source into the schema (see module docstring).

    Args:
        source: local file/folder, an in-memory ``Dataset``, or a Hub id.
        format: one of :data:`~pluralign.data.formats.FORMATS`; detected when None.
        **options: the format's options (its options dataclass in
            :mod:`pluralign.data.formats`): ``split``, ``limit`` and ``attributes`` for every
            format, e.g. ``pairs="by_score"`` for PRISM or ``column_map={...}`` for jsonl.

    Raises:
        SchemaError: unreadable or malformed source (names the source, row and field).
        ConfigError: unknown format, or an option the format does not take or a bad value.
    """
    if not isinstance(source, (str, os.PathLike, datasets.Dataset)):
        raise ConfigError(f"load_preferences: source={source!r:.60} is a "
                          f"{type(source).__name__}; give a file or folder path, a Hub id or a "
                          "datasets.Dataset (rows in memory: datasets.Dataset.from_list(rows))")
    _check_exists(source)
    spec = get_format(detect_format(source) if format is None else format)
    opts = spec.build_options(options)
    name = "<in-memory dataset>" if isinstance(source, datasets.Dataset) else str(source)
    if isinstance(source, datasets.Dataset):
        loaded: Loaded = source
    elif Path(os.fspath(source)).expanduser().exists():
        loaded = spec.load_local(Path(os.fspath(source)).expanduser(), opts)
    else:
        loaded = spec.load_hub(str(source), opts)
    dataset = _to_schema(loaded, name, opts)
    if opts.attributes is not None:
        dataset = _select_attributes(validate(dataset, source=name), opts.attributes)
    return validate(dataset, source=name)
