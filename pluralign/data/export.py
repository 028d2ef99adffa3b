"""Export any preference dataset in TRL's preference format: :func:`export_preferences`.

TRL's preference datasets (``DPOTrainer``, ``RewardTrainer``) have ``prompt``, ``chosen`` and
``rejected`` columns, each a string (standard format) or a list of ``{"role", "content"}`` messages
(conversational format); other columns travel along. The export keeps every column of the schema
(``annotator_id``, ``attributes`` and ``context`` as mappings, ``item_id``) and every extra column
(synthetic ground truth, ``type_labels``/``agreement`` of full-information items, ...), so the
files load both with ``datasets.load_dataset`` and back with
:func:`~pluralign.data.load_preferences`.

Three kinds of input are recognised:

* **pairs** (the schema of :func:`~pluralign.data.validate`) and **full-information items**
  (:func:`~pluralign.data.pairing.full_information_items`: pairs plus ``type_labels`` and
  ``agreement``) are written row for row;
* **paired preferences** (:func:`~pluralign.data.pairing.paired_preferences`: ``prompt_1``,
  ``chosen_1``, ..., ``prompt_2``, ... per row) are written as two pairs per row, in order, with
  the ``_1``/``_2`` suffixes removed and ``pair_id`` (the input row) and ``pair_position`` (1 or
  2) added, so ``groupby("pair_id")`` restores the pairing.

Layout in ``output_dir`` (the ``datasets`` split-file convention): ``train.jsonl`` (``trl-jsonl``),
``train.parquet`` (``parquet``), or the ``train/`` folder of ``Dataset.save_to_disk`` (``hf``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pluralign.data.schema import (
    column_array,
    dataset_from_table,
    parquet_table,
    schema_error,
    validate,
)
from pluralign.errors import ConfigError
from pluralign.io import atomic_path

EXPORT_FORMATS = ("trl-jsonl", "parquet", "hf")
#: the file or folder each export format writes inside ``output_dir``.
EXPORT_NAMES = {"trl-jsonl": "train.jsonl", "parquet": "train.parquet", "hf": "train"}
PAIRED_SUFFIXES = ("_1", "_2")
JSONL_BATCH = 10_000


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_preferences` wrote.

    Attributes:
        path: the file (``trl-jsonl``, ``parquet``) or folder (``hf``) written.
        format: the export format.
        kind: ``pairs``, ``full_information_items`` or ``paired_preferences`` (the input).
        rows: preference pairs written.
        annotators: distinct non-null ``annotator_id`` values.
        items: distinct ``item_id`` values.
        prompts: distinct prompts.
    """

    path: Path
    format: str
    kind: str
    rows: int
    annotators: int
    items: int
    prompts: int

    def counts(self) -> dict[str, int]:
        """The counts as a mapping (what the CLI prints)."""
        return {"rows": self.rows, "annotators": self.annotators, "items": self.items,
                "prompts": self.prompts}


def dataset_kind(dataset: datasets.Dataset) -> str:
    """``pairs``, ``full_information_items`` or ``paired_preferences`` (module docstring)."""
    names = set(dataset.column_names)
    if {f"{c}{s}" for c in ("prompt", "chosen", "rejected") for s in PAIRED_SUFFIXES} <= names:
        return "paired_preferences"
    if {"type_labels", "agreement"} <= names:
        return "full_information_items"
    return "pairs"


def unpair(dataset: datasets.Dataset) -> datasets.Dataset:
    """Paired preferences -> one pair per row (two per input row), with ``pair_id`` and
    ``pair_position``; shared columns (``annotator_id``, ``attributes``) are repeated."""
    n = len(dataset)
    suffixed = {c[:-2] for c in dataset.column_names if c.endswith(PAIRED_SUFFIXES)}
    shared = [c for c in dataset.column_names if not c.endswith(PAIRED_SUFFIXES)]
    # row i of the output is (input row i // 2, position i % 2 + 1): interleave the two halves
    order = pa.array([k for i in range(n) for k in (i, n + i)])
    columns = {}
    for base in sorted(suffixed, key=lambda c: dataset.column_names.index(f"{c}_1")):
        both = pa.chunked_array(column_array(dataset, f"{base}_1").chunks
                                + column_array(dataset, f"{base}_2").chunks)
        columns[base] = pc.take(both, order)
    for name in shared:
        values = column_array(dataset, name)
        columns[name] = pc.take(pa.chunked_array(values.chunks + values.chunks), order)
    columns["pair_id"] = pa.array([i for i in range(n) for _ in (1, 2)], type=pa.int64())
    columns["pair_position"] = pa.array([p for _ in range(n) for p in (1, 2)], type=pa.int8())
    return dataset_from_table(pa.table(columns))


def _distinct(dataset: datasets.Dataset, name: str) -> int:
    column = column_array(dataset, name)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return len(pc.unique(column.drop_null()))
    return len({repr(v) for v in column.to_pylist() if v is not None})


def export_preferences(dataset: datasets.Dataset, output_dir: str | os.PathLike[str],
                       format: str = "trl-jsonl", *, source: str = "<dataset>") -> ExportResult:
    """Write ``dataset`` in TRL's preference format (see the module docstring) and count it.

    Args:
        dataset: pairs, paired preferences or full-information items.
        output_dir: folder to write into (created); an existing export there is replaced
            atomically.
        format: one of :data:`EXPORT_FORMATS`.
        source: name of the input for error messages.

    Returns:
        :class:`ExportResult` with the path written and the counts.

    Raises:
        ConfigError: unknown format.
        SchemaError: the data do not fit the schema (names the row and field).
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format!r}; use one of {EXPORT_FORMATS}")
    kind = dataset_kind(dataset)
    pairs = validate(unpair(dataset) if kind == "paired_preferences" else dataset, source=source)
    target = Path(output_dir) / EXPORT_NAMES[format]
    target.parent.mkdir(parents=True, exist_ok=True)
    if format == "hf":
        _save_to_disk(pairs, target)
    else:
        with atomic_path(target) as tmp:
            if format == "parquet":
                pq.write_table(parquet_table(pairs), tmp)
            else:
                _write_jsonl(pairs, tmp, source)
    return ExportResult(path=target, format=format, kind=kind, rows=len(pairs),
                        annotators=_distinct(pairs, "annotator_id"),
                        items=_distinct(pairs, "item_id"), prompts=_distinct(pairs, "prompt"))


def _write_jsonl(dataset: datasets.Dataset, path: Path, source: str) -> None:
    """One JSON object per line with exact floats (``datasets.Dataset.to_json`` goes through
    pandas and keeps only 10 significant digits); NaN/inf are refused, never written."""
    row = 0
    with open(path, "w", encoding="utf-8") as handle:
        for batch in dataset.data.table.to_batches(max_chunksize=JSONL_BATCH):
            for record in batch.to_pylist():
                try:
                    handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
                except ValueError as exc:
                    raise schema_error(source, row, None, f"cannot be written as JSON ({exc})") \
                        from exc
                row += 1


def _save_to_disk(dataset: datasets.Dataset, target: Path) -> None:
    """``save_to_disk`` into a temporary sibling folder, then swap it in (never half-written)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        dataset.save_to_disk(str(tmp / "data"))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp / "data", target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
