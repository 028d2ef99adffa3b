"""``pluralign experiment NAME`` (no NAME lists them) and its aliases ``pluralign demo``
(``experiment demo``) and ``pluralign simulate`` (``experiment dahp``): argument parsing plus one
call of the experiment's run function (:data:`pluralign.experiments.EXPERIMENTS`). Each way of
invoking an experiment shows that experiment's examples, spelled as invoked."""

from __future__ import annotations

import argparse
from pathlib import Path

from pluralign.config import add_config_arguments, config_from_args
from pluralign.experiments import EXPERIMENTS, Experiment
from pluralign.runs import run_guarded


def _add_arguments(parser: argparse.ArgumentParser, name: str, command: str) -> None:
    experiment = EXPERIMENTS[name]
    add_config_arguments(parser, experiment.config_class(),
                         experiment.examples.format(command=command), experiment.default_config)


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """``pluralign experiment NAME [--config FILE] [key=value ...] --output-dir DIR``."""
    parser.epilog = """Examples:
  pluralign experiment                               # list the shipped experiments
  pluralign experiment demo --output-dir runs/demo
  pluralign experiment group_robust --output-dir runs/group_robust seed=1
  pluralign experiment composition --help            # its examples and every field

Shipped experiments:
""" + "\n".join(f"  {name:<14} {e.help}" for name, e in EXPERIMENTS.items())
    sub = parser.add_subparsers(dest="experiment", metavar="NAME")
    for name, experiment in EXPERIMENTS.items():
        cmd = sub.add_parser(name, help=experiment.help, description=experiment.help)
        _add_arguments(cmd, name, f"pluralign experiment {name}")


def _run(experiment: Experiment, args: argparse.Namespace) -> int:
    if args.config is not None and args.config == experiment.default_config \
            and not Path(args.config).is_file():
        args.config = None  # the shipped config is optional: its values are the defaults
    config, _ = config_from_args(experiment.config_class(), args)
    run_guarded(config, experiment.runner(), resume=getattr(config, "resume", False))
    return 0


def run_experiment(args: argparse.Namespace) -> int:
    """List the shipped experiments (no NAME) or run one."""
    if args.experiment is None:
        for name, experiment in EXPERIMENTS.items():
            print(f"{name:<14} {experiment.help}")
        return 0
    return _run(EXPERIMENTS[args.experiment], args)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """``pluralign demo``: ``pluralign experiment demo``."""
    _add_arguments(parser, "demo", "pluralign demo")


def run_demo(args: argparse.Namespace) -> int:
    return _run(EXPERIMENTS["demo"], args)


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """``pluralign simulate``: ``pluralign experiment dahp``."""
    _add_arguments(parser, "dahp", "pluralign simulate")


def run_simulate(args: argparse.Namespace) -> int:
    return _run(EXPERIMENTS["dahp"], args)
