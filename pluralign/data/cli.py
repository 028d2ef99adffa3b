"""``pluralign data inspect``, ``synthetic`` and ``export``: look at, make and move preference data.

``inspect`` loads any source :func:`~pluralign.data.load_preferences` accepts and prints the number
of pairs, annotators, prompts and items, pairs per annotator, a few example pairs, and the pairs
and annotators of every subgroup of the chosen attributes (``--by``; default: the demographic
attributes age/gender/education/employment_status that are present, plus every context key),
with a warning for subgroups that are too small to estimate anything per group.

``synthetic`` writes a synthetic population (pairs + ground truth) to a folder that ``inspect``,
``load_preferences`` and ``load_population`` read back.

``export`` loads a source as ``inspect`` does and writes it in TRL's preference format
(:func:`~pluralign.data.export.export_preferences`: ``train.jsonl``, ``train.parquet`` or the
``save_to_disk`` folder ``train/``), printing and recording the counts.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from pluralign.config import apply_overrides, build_config, describe_fields
from pluralign.data.export import EXPORT_FORMATS, export_preferences
from pluralign.data.loaders import FORMATS, detect_format, load_preferences
from pluralign.data.schema import column_array, to_pandas
from pluralign.data.synthetic import PopulationConfig, make_population
from pluralign.errors import ConfigError
from pluralign.io import check_output_dir, read_yaml_mapping
from pluralign.runs import write_config, write_metrics

DEFAULT_BY = ("age", "gender", "education", "employment_status")

_EPILOG = """Examples:
  pluralign data inspect tests/fixtures/prism
  pluralign data inspect tests/fixtures/prism --by age religion.simplified pairs=by_score
  pluralign data inspect community_alignment.csv language=en --min-annotators 20
  pluralign data inspect hh-rlhf/helpful-base --split test --limit 1000 --output-dir runs/hh
  pluralign data inspect HannahRoseKirk/prism-alignment      # Hub id (needs network)
  pluralign data synthetic n_annotators=500 strength=gamma --output-dir runs/pop
  pluralign data synthetic --config pop.yaml --homogeneous --output-dir runs/pop-control
  pluralign data export tests/fixtures/prism --to trl-jsonl --output-dir exports/prism
  pluralign data export runs/pop --to hf --output-dir exports/pop    # Dataset.save_to_disk
  pluralign data export community_alignment.csv language=en --to parquet --output-dir exports/ca

export writes OUTPUT_DIR/train.jsonl (trl-jsonl), train.parquet or train/ (hf) with prompt,
chosen, rejected and every other column (annotator_id, attributes and context as mappings,
item_id, extras), plus config.yaml and metrics.json (the counts). Read it back from that file
or folder (`pluralign data inspect exports/prism/train.jsonl`), not from OUTPUT_DIR.
"""


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """SOURCE and how to load it: the same for every subcommand that reads a dataset."""
    parser.add_argument("source", help="local file/folder or Hub id")
    parser.add_argument("--format", choices=FORMATS, help="source format (default: detected)")
    parser.add_argument("--split", help="split to read (HH-RLHF files, Hub datasets)")
    parser.add_argument("--limit", type=int, help="read at most this many pairs")
    parser.add_argument("--config", metavar="FILE",
                        help="YAML mapping of loader options (key=value overrides apply on top)")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                        help="loader option, e.g. pairs=by_score, language=en, chat=true")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pluralign data`` (subcommands ``inspect``, ``synthetic``, ``export``)."""
    parser.epilog = _EPILOG
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    inspect = sub.add_parser(
        "inspect", help="summarise a preference dataset", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print pairs, annotators, prompts and per-subgroup counts of a dataset.")
    _add_source_arguments(inspect)
    inspect.add_argument("--by", nargs="+", metavar="ATTR",
                         help="attributes or context keys to count subgroups of")
    inspect.add_argument("--output-dir", help="also record config.yaml and metrics.json here")
    inspect.add_argument("--min-annotators", type=int, default=10,
                         help="warn about subgroups with fewer annotators (default 10)")
    inspect.add_argument("--min-pairs", type=int, default=50,
                         help="warn about subgroups with fewer pairs (default 50)")
    inspect.add_argument("--examples", type=int, default=2, help="example pairs to show")
    fields = "\nPopulationConfig fields (key=value or --config):\n" + "\n".join(
        describe_fields(PopulationConfig))
    synth = sub.add_parser(
        "synthetic", help="write a synthetic population with ground truth",
        epilog=_EPILOG + fields,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate a synthetic population (pluralign.data.synthetic) into a folder.")
    synth.add_argument("--output-dir", required=True,
                       help="folder to write (config.yaml, pairs.parquet, truth.json, ...)")
    synth.add_argument("--config", help="YAML file of PopulationConfig fields")
    synth.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                       help="override one PopulationConfig field (YAML value)")
    synth.add_argument("--homogeneous", action="store_true",
                       help="write the homogeneous control of the configuration")
    export = sub.add_parser(
        "export", help="write a dataset in TRL's preference format (jsonl, parquet, hf)",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Load SOURCE as `inspect` does and write it for TRL's DPOTrainer / "
        "RewardTrainer and `datasets.load_dataset`, with every extra column.")
    _add_source_arguments(export)
    export.add_argument("--to", choices=EXPORT_FORMATS, default="trl-jsonl",
                        help="export format (default: %(default)s)")
    export.add_argument("--output-dir", required=True,
                        help="folder to write the export, config.yaml and metrics.json into")


def _short(value: Any, width: int = 90) -> str:
    text = value if isinstance(value, str) else " | ".join(
        f"{m.get('role')}: {m.get('content')}" for m in value)
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


def _subgroup_table(df: pd.DataFrame, column: str, name: str, args: argparse.Namespace,
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
        small_pairs = len(group) < args.min_pairs
        small_annot = annotators is not None and annotators < args.min_annotators
        if small_pairs or small_annot:
            warnings.append(f"{name}={value!r}: only {len(group)} pairs"
                            + ("" if annotators is None else f" from {annotators} annotators")
                            + " — too small for reliable per-group estimates")
    return table, warnings


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The dataset SOURCE names (:func:`_add_source_arguments`) and the settings it was loaded
    with (what ``config.yaml`` records)."""
    base = read_yaml_mapping(args.config, "loader options") if args.config else {}
    options = apply_overrides(base, args.overrides)
    for flag in ("split", "limit", "format"):
        if flag in options:
            raise ConfigError(f"{flag}={options[flag]!r}: {flag} is a flag of data inspect; "
                              f"pass --{flag} instead")
    fmt = args.format or detect_format(args.source)
    ds = load_preferences(args.source, format=fmt, split=args.split, limit=args.limit, **options)
    return ds, {"source": args.source, "format": fmt, "split": args.split, "limit": args.limit,
                "options": options}


def _inspect(args: argparse.Namespace, console: Console) -> int:
    ds, loaded = _load(args)
    fmt = loaded["format"]
    df = to_pandas(ds)
    has_annotators = df["annotator_id"].notna().any()
    per_annotator = df.groupby("annotator_id").size() if has_annotators else pd.Series(dtype=int)
    prompts = column_array(ds, "prompt").to_pylist()
    distinct_prompts = len({p if isinstance(p, str) else repr(p) for p in prompts})
    summary = Table(title=f"{args.source} ({fmt})", show_header=False)
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
    if args.output_dir:
        write_config(args.output_dir, loaded)
        write_metrics(args.output_dir, {
            "pairs": len(ds), "annotators": int(per_annotator.size), "prompts": distinct_prompts,
            "items": int(df["item_id"].nunique()), "extra_columns": extra})

    examples = Table(title="example pairs", show_lines=True)
    for header in ("prompt", "chosen", "rejected"):
        examples.add_column(header, overflow="fold")
    for row in ds.select(range(min(args.examples, len(ds)))):
        examples.add_row(_short(row["prompt"]), _short(row["chosen"]), _short(row["rejected"]))
    if args.examples > 0:
        console.print(examples)

    attrs = [c[len("attr."):] for c in df.columns if c.startswith("attr.")]
    contexts = [c[len("ctx."):] for c in df.columns if c.startswith("ctx.")]
    wanted = args.by or [a for a in DEFAULT_BY if a in attrs] + contexts
    warnings = []
    for name in wanted:
        column = f"attr.{name}" if name in attrs else f"ctx.{name}" if name in contexts else None
        if column is None:
            warnings.append(f"{name!r} is neither an attribute nor a context key of this dataset")
            continue
        table, notes = _subgroup_table(df, column, name, args, has_annotators)
        console.print(table)
        warnings += notes
    if not wanted:
        console.print("no annotator attributes or context keys to group by")
    for note in warnings:
        console.print(f"[yellow]warning:[/yellow] {note}")
    return 0


def _synthetic(args: argparse.Namespace, console: Console) -> int:
    config = build_config(PopulationConfig, args.config, args.overrides)
    check_output_dir(args.output_dir)
    if args.homogeneous:
        config = config.homogeneous_control()
    population = make_population(config)
    out = population.save(args.output_dir)
    write_config(out, config)
    console.print(f"wrote {len(population.dataset)} pairs from {config.n_annotators} annotators "
                  f"({population.truth.n_types} types, β {population.truth.strength}) to {out}")
    return 0


def _export(args: argparse.Namespace, console: Console) -> int:
    ds, loaded = _load(args)
    result = export_preferences(ds, args.output_dir, args.to, source=args.source)
    write_config(args.output_dir, loaded | {"to": args.to})
    write_metrics(args.output_dir, {"kind": result.kind, "format": result.format,
                                    "path": result.path, **result.counts()})
    counts = ", ".join(f"{n} {what}" for what, n in result.counts().items())
    console.print(f"exported {result.kind} ({result.format}): {counts} to {result.path}")
    return 0


def run_data(args: argparse.Namespace) -> int:
    """Run ``pluralign data SUBCOMMAND``; returns the exit status."""
    console = Console(width=120)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "data_command", None) == "inspect":
        return _inspect(args, console)
    if getattr(args, "data_command", None) == "synthetic":
        return _synthetic(args, console)
    if getattr(args, "data_command", None) == "export":
        return _export(args, console)
    console.print("usage: pluralign data {inspect,synthetic,export} ... (see pluralign data "
                  "--help)")
    return 2
