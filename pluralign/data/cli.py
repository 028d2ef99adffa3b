"""``pluralign data inspect | synthetic | export``: argument parsing plus one call into
:mod:`pluralign.data.commands` (each subcommand is described by its config dataclass there)."""

from __future__ import annotations

import argparse
import logging

from pluralign.config import add_config_arguments, config_from_args
from pluralign.errors import ConfigError
from pluralign.runs import run_guarded

_INSPECT = """Examples:
  pluralign data inspect data=tests/fixtures/prism
  pluralign data inspect data=tests/fixtures/prism "by=[age, religion.simplified]" \\
      data.options.pairs=by_score
  pluralign data inspect data=tests/fixtures/community_alignment.csv data.options.language=en \\
      min_annotators=1
  pluralign data inspect data=tests/fixtures/hh_rlhf data.options.split=test \\
      data.options.limit=2 --output-dir runs/hh
  pluralign data inspect --config runs/hh/config.yaml examples=0 --output-dir runs/hh-again
  pluralign data inspect data=synthetic data.population.n_annotators=50 by=gender
  pluralign data inspect data=HannahRoseKirk/prism-alignment      # Hub id (needs network)

data.format is detected from the source when omitted; data.options are the format's options
(listed below under data.options)."""

_SYNTHETIC = """Examples:
  pluralign data synthetic --output-dir runs/pop
  pluralign data synthetic population.n_annotators=500 population.strength=gamma \\
      --output-dir runs/pop-gamma
  pluralign data synthetic --config runs/pop/config.yaml population.homogeneous=true \\
      --output-dir runs/pop-control
  pluralign data inspect data=runs/pop by=gender

The population section is the data.population section of a train recipe."""

_EXPORT = """Examples:
  pluralign data export data=tests/fixtures/prism --output-dir exports/prism
  pluralign data export data=tests/fixtures/prism data.options.pairs=by_score to=parquet \\
      --output-dir exports/prism-by-score
  pluralign data export data=tests/fixtures/community_alignment.csv data.options.language=en \\
      to=hf --output-dir exports/ca             # Dataset.save_to_disk folder exports/ca/train
  pluralign data inspect data=exports/prism/train.jsonl

export writes OUTPUT_DIR/train.jsonl (trl-jsonl), train.parquet or train/ (hf) with prompt,
chosen, rejected and every other column (annotator_id, attributes and context as mappings,
item_id, extras), plus config.yaml and metrics.json (the counts). Read it back from that file
or folder (data=exports/prism/train.jsonl), not from OUTPUT_DIR."""


def _subcommands() -> dict[str, tuple[type, str, str]]:
    from pluralign.data.commands import ExportConfig, InspectConfig, SyntheticConfig

    return {
        "inspect": (InspectConfig, "summarise a preference dataset: pairs, annotators, "
                    "subgroups", _INSPECT),
        "synthetic": (SyntheticConfig, "write a synthetic population with ground truth",
                      _SYNTHETIC),
        "export": (ExportConfig, "write a dataset in TRL's preference format (jsonl, parquet, "
                   "hf)", _EXPORT),
    }


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pluralign data`` (subcommands ``inspect``, ``synthetic``, ``export``)."""
    subcommands = _subcommands()
    parser.epilog = "Examples:\n" + "\n".join(
        examples.split("\n\n")[0].removeprefix("Examples:\n")
        for _, _, examples in subcommands.values())
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    for name, (cls, help_text, examples) in subcommands.items():
        add_config_arguments(sub.add_parser(name, help=help_text, description=help_text),
                             cls, examples)


def run_data(args: argparse.Namespace) -> int:
    """Run ``pluralign data SUBCOMMAND``; returns the exit status."""
    from rich.console import Console

    from pluralign.data.commands import export_data, inspect_data, write_synthetic

    name = getattr(args, "data_command", None)
    if name is None:
        raise ConfigError("choose a subcommand: pluralign data inspect|synthetic|export (see "
                          "pluralign data --help)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config, _ = config_from_args(_subcommands()[name][0], args)
    run = {"inspect": inspect_data, "synthetic": write_synthetic, "export": export_data}[name]
    console = Console(width=120)
    run_guarded(config, lambda c: run(c, console))
    return 0
