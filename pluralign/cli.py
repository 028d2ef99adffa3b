"""The ``pluralign`` command: a thin dispatcher.

Every command has one grammar, ``pluralign COMMAND [--config FILE] [key=value ...] --output-dir
DIR`` (:mod:`pluralign.config`). Each lives beside the code it drives (``pluralign/<layer>/cli.py``,
``pluralign/experiments/cli.py``) and exposes ``add_<name>_arguments(parser)`` and
``run_<name>(args) -> int``. Only the module of the command being run is imported, so
``pluralign --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from pluralign.errors import PluralignError

# name -> (module that implements it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pluralign.experiments.cli", "run the embedded end-to-end demo on a laptop CPU"),
    "experiment": ("pluralign.experiments.cli", "list the shipped experiments or run one"),
    "data": ("pluralign.data.cli", "inspect, generate and export preference datasets"),
    "sft": ("pluralign.training.cli", "supervised fine-tuning on prompt + chosen"),
    "train": ("pluralign.training.cli", "train a policy: DPO, MixDPO, corrected DPO, agreement"),
    "evaluate": ("pluralign.evaluation.cli", "preference margins by subgroup, win rates"),
    "diagnose": ("pluralign.evaluation.cli", "preference-strength heterogeneity diagnostic"),
    "report": ("pluralign.evaluation.cli", "build report.html from a run folder"),
    "nbc": ("pluralign.social_choice.cli", "normalized Borda count vs average reward on surveys"),
    "simulate": ("pluralign.experiments.cli", "DAHP discrete proximity environment experiments"),
    "pal": ("pluralign.reward.cli", "PAL and Bradley-Terry reward models: train, eval, adapt"),
}


def _build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pluralign",
        description="Pluralistic preference alignment: train and audit models on heterogeneous "
        "preference data.",
        epilog="Run `pluralign COMMAND --help` for a command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(
            name, help=help_text, description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == wanted:
            getattr(importlib.import_module(module), f"add_{name}_arguments")(cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser(argv)
    # key=value overrides may come after an option (`--output-dir DIR a=1`), where argparse
    # leaves them over: they join the command's overrides, in order.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(getattr(module, f"run_{args.command}")(args) or 0)
    except PluralignError as exc:
        print(f"pluralign {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system refused a read or write: not a pluralign bug
        where = f": {exc.filename}" if exc.filename else ""
        print(f"pluralign {args.command}: error: {exc.strerror or exc}{where}; check the path "
              "and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"pluralign {args.command}: interrupted; files already written are intact.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
