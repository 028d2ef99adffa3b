"""The configs and runs of ``pluralign data inspect``, ``synthetic`` and ``export``.

``inspect`` loads any ``data:`` section (a file, folder, Hub id or ``synthetic``) and prints the
number of pairs, annotators, prompts and items, pairs per annotator, a few example pairs, and the
pairs and annotators of every subgroup of the chosen attributes (``by``; default: the demographic
attributes age/gender/education/employment_status that are present, plus every context key),
with a warning for subgroups that are too small to estimate anything per group.

``synthetic`` writes a synthetic population (pairs + ground truth) to a folder that ``inspect``,
``load_preferences`` and ``load_population`` read back.

``export`` loads a ``data:`` section as ``inspect`` does and writes it in TRL's preference format
(:func:`~pluralign.data.export.export_preferences`: ``train.jsonl``, ``train.parquet`` or the
``save_to_disk`` folder ``train/``), printing and recording the counts.

Each writes its config as ``config.yaml``, which ``--config`` reads back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from pluralign.data.config import DataConfig, load_data, require_data
from pluralign.data.export import EXPORT_FORMATS, export_preferences
from pluralign.data.formats import detect_format
from pluralign.data.schema import column_array, to_pandas
from pluralign.data.synthetic import PopulationConfig, make_population
from pluralign.errors import ConfigError
from pluralign.io import check_output_dir
from pluralign.runs import RunFolderOptions, write_config, write_metrics
from pluralign.validation import INDEX, check_fields, check_names

DEFAULT_BY = ("age", "gender", "education", "employment_status")


def _check_output_dir(output_dir: str | None, command: str, required: bool) -> None:
    if output_dir is not None:
        check_output_dir(output_dir, "output_dir")
    elif required:
        raise ConfigError(f"{command} needs --output-dir DIR (the folder to write)")


@dataclass
class InspectConfig(RunFolderOptions):
    """``pluralign data inspect``: counts, example pairs and subgroup sizes of a dataset.

    Attributes:
        data: the preference data, read whole (``data=PATH`` is short for data.source=PATH).
        by: attributes or context keys to count subgroups of; default: the demographic
            attributes age, gender, education and employment_status present, plus every context
            key.
        min_annotators: warn about subgroups with fewer annotators.
        min_pairs: warn about subgroups with fewer pairs.
        examples: example pairs to show.
        output_dir: also record config.yaml and metrics.json in this folder (optional).
    """

    data: DataConfig | None = None
    by: list[str] | None = None
    min_annotators: int = 10
    min_pairs: int = 50
    examples: int = 2
    output_dir: str | None = None

    def __post_init__(self) -> None:
        require_data(self.data, "data inspect")
        if self.by is not None:
            self.by = check_names(self.by, "by")
        check_fields(self, {"min_annotators": INDEX, "min_pairs": INDEX, "examples": INDEX})
        _check_output_dir(self.output_dir, "data inspect", required=False)


@dataclass
class SyntheticConfig(RunFolderOptions):
    """``pluralign data synthetic``: write a synthetic population with its ground truth.

    Attributes:
        population: the population (the data.population section of a recipe);
            population.homogeneous=true writes the homogeneous control of the configuration.
        output_dir: folder to write (pairs.parquet, truth.json, ..., config.yaml).
    """

    population: PopulationConfig = field(default_factory=PopulationConfig)
    output_dir: str | None = None

    def __post_init__(self) -> None:
        _check_output_dir(self.output_dir, "data synthetic", required=True)


@dataclass
class ExportConfig(RunFolderOptions):
    """``pluralign data export``: write a dataset in TRL's preference format.

    Attributes:
        data: the preference data, read whole (``data=PATH`` is short for data.source=PATH).
        to: export format: trl-jsonl (train.jsonl), parquet (train.parquet) or hf (the
            Dataset.save_to_disk folder train/).
        output_dir: folder to write the export, config.yaml and metrics.json into.
    """

    data: DataConfig | None = None
    to: str = "trl-jsonl"
    output_dir: str | None = None

    def __post_init__(self) -> None:
        require_data(self.data, "data export")
        if self.to not in EXPORT_FORMATS:
            raise ConfigError(f"to={self.to!r} is not an export format; use one of "
                              f"{EXPORT_FORMATS}")
        _check_output_dir(self.output_dir, "data export", required=True)


def _format_name(spec: DataConfig) -> str:
    if spec.source == "synthetic":
        return "synthetic"
    return spec.format or detect_format(spec.source)


def _short(value: Any, width: int = 90) -> str:
    text = value if isinstance(value, str) else " | ".join(
        f"{m.get('role')}: {m.get('content')}" for m in value)
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


def _subgroup_table(df: pd.DataFrame, column: str, name: str, config: InspectConfig,
                    has_annotators: bool) -> tuple[Table, list[str]]:
    values = df[column].fillna("(missing)")
    table = Table(title=f"subgroups by {name}")
    for header in ("value", "pairs", "share", "annotators"):
        table.add_column(header, justify="left" if header == "value" else "right")
    warnings = []
    grouped = df.assign(_v=values).groupby("_v", sort=True)
    for value, group in grouped:
        annotators = group["annotator_id"].nunique() if has_annotators else None
        table.add_row(str(value), str(len(group)), f"{len(group) / len(df):.1%}",
                      "-" if annotators is None else str(annotators))
        small_pairs = len(group) < config.min_pairs
        small_annot = annotators is not None and annotators < config.min_annotators
        if small_pairs or small_annot:
            warnings.append(f"{name}={value!r}: only {len(group)} pairs"
                            + ("" if annotators is None else f" from {annotators} annotators")
                            + " — too small for reliable per-group estimates")
    return table, warnings


def inspect_data(config: InspectConfig, console: Console) -> dict[str, Any]:
    """Print the summary of ``config.data``; record config.yaml and metrics.json in
    ``config.output_dir`` if set. Returns the metrics."""
    ds = load_data(config.data)[0]
    fmt = _format_name(config.data)
    df = to_pandas(ds)
    has_annotators = df["annotator_id"].notna().any()
    per_annotator = df.groupby("annotator_id").size() if has_annotators else pd.Series(dtype=int)
    prompts = column_array(ds, "prompt").to_pylist()
    distinct_prompts = len({p if isinstance(p, str) else repr(p) for p in prompts})
    summary = Table(title=f"{config.data.source} ({fmt})", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("pairs", str(len(ds)))
    summary.add_row("annotators", str(per_annotator.size) if has_annotators
                    else "none (anonymous)")
    summary.add_row("prompts", str(distinct_prompts))
    summary.add_row("items (item_id)", str(df["item_id"].nunique()))
    if has_annotators:
        q = np.percentile(per_annotator.to_numpy(), [0, 50, 100])
        summary.add_row("pairs per annotator (min/median/max)", f"{q[0]:.0f} / {q[1]:.0f} / "
                        f"{q[2]:.0f}")
    summary.add_row("prompt format", "text" if isinstance(prompts[0], str) else "chat messages")
    extra = [c for c in ds.column_names if c not in
             ("prompt", "chosen", "rejected", "annotator_id", "attributes", "context", "item_id")]
    summary.add_row("extra columns", ", ".join(extra) or "-")
    console.print(summary)
    metrics = {"format": fmt, "pairs": len(ds), "annotators": int(per_annotator.size),
               "prompts": distinct_prompts, "items": int(df["item_id"].nunique()),
               "extra_columns": extra}
    if config.output_dir:
        write_config(config.output_dir, config)
        write_metrics(config.output_dir, metrics)

    examples = Table(title="example pairs", show_lines=True)
    for header in ("prompt", "chosen", "rejected"):
        examples.add_column(header, overflow="fold")
    for row in ds.select(range(min(config.examples, len(ds)))):
        examples.add_row(_short(row["prompt"]), _short(row["chosen"]), _short(row["rejected"]))
    if config.examples > 0:
        console.print(examples)

    attrs = [c[len("attr."):] for c in df.columns if c.startswith("attr.")]
    contexts = [c[len("ctx."):] for c in df.columns if c.startswith("ctx.")]
    wanted = config.by or [a for a in DEFAULT_BY if a in attrs] + contexts
    warnings = []
    for name in wanted:
        column = f"attr.{name}" if name in attrs else f"ctx.{name}" if name in contexts else None
        if column is None:
            warnings.append(f"{name!r} is neither an attribute nor a context key of this dataset")
            continue
        table, notes = _subgroup_table(df, column, name, config, has_annotators)
        console.print(table)
        warnings += notes
    if not wanted:
        console.print("no annotator attributes or context keys to group by")
    for note in warnings:
        console.print(f"[yellow]warning:[/yellow] {note}")
    return metrics


def write_synthetic(config: SyntheticConfig, console: Console) -> None:
    """Generate ``config.population`` and save it (and config.yaml) in ``config.output_dir``."""
    population = make_population(config.population)
    out = population.save(config.output_dir)
    write_config(out, config)
    console.print(f"wrote {len(population.dataset)} pairs from {config.population.n_annotators} "
                  f"annotators ({population.truth.n_types} types, β "
                  f"{population.truth.strength}) to {out}")


def export_data(config: ExportConfig, console: Console) -> dict[str, Any]:
    """Load ``config.data`` and export it; returns the metrics written to metrics.json."""
    ds = load_data(config.data)[0]
    result = export_preferences(ds, config.output_dir, config.to, source=config.data.source)
    write_config(config.output_dir, config)
    metrics = {"kind": result.kind, "format": result.format, "path": result.path,
               **result.counts()}
    write_metrics(config.output_dir, metrics)
    counts = ", ".join(f"{n} {what}" for what, n in result.counts().items())
    console.print(f"exported {result.kind} ({result.format}): {counts} to {result.path}")
    return metrics
