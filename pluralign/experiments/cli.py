"""``pluralign experiment NAME`` (no NAME lists them) and its aliases ``pluralign demo``
(``experiment demo``) and ``pluralign simulate`` (``experiment dahp``): argument parsing plus one
call of the experiment's run function (:data:`pluralign.experiments.EXPERIMENTS`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pluralign.config import add_config_arguments, config_from_args
from pluralign.experiments import EXPERIMENTS, Experiment

_DEMO_EXAMPLES = """Examples:
  pluralign demo                                  # configs/demo.yaml, writes runs/demo/
  pluralign demo --output-dir /tmp/demo seed=1
  pluralign demo --config my_demo.yaml progress=false

Writes config.yaml, report.html, PNG figures and metrics.json (micro/macro margins with CIs per
method and learned_beta_variance = final Var[beta] of Gamma MixDPO on each population)."""

_SIMULATE_EXAMPLES = """\
Examples:
  pluralign simulate --config configs/dahp_env.yaml --output-dir runs/dahp_env
  pluralign simulate experiment.policy=mlp experiment.seed=1 --output-dir runs/dahp_mlp
  pluralign simulate "experiment.methods=[dpo, agreement]" experiment.num_pairs=100000 \\
      --output-dir runs/quick

The run folder gets config.yaml, metrics.json (TV to the optimal policy, peak offset and
Spearman correlations per method, plus timings), policies.csv (each policy against the offset
delta = response - prompt, averaged over states), policies.png ([DAHP, Fig. 4]) and
report.html (all of it on one page; `pluralign report --output-dir RUN` rebuilds it).
"""


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """``pluralign experiment NAME [--config FILE] [key=value ...] --output-dir DIR``."""
    parser.epilog = """Examples:
  pluralign experiment                               # list the shipped experiments
  pluralign experiment demo --output-dir runs/demo
  pluralign experiment dahp --config configs/dahp_env.yaml --output-dir runs/dahp_env
  pluralign experiment pal_benchmark --config configs/pal_benchmark.yaml --output-dir runs/pal
  pluralign experiment group_robust --output-dir runs/group_robust seed=1
  pluralign experiment replicate --output-dir runs/replicate "seeds=[0, 1, 2]"
  pluralign experiment replicate --config configs/replicate_smollm2.yaml "seeds=[0]"
  pluralign experiment composition --help            # every field of its config

Shipped experiments:
""" + "\n".join(f"  {name:<14} {e.help}" for name, e in EXPERIMENTS.items())
    sub = parser.add_subparsers(dest="experiment", metavar="NAME")
    for name, experiment in EXPERIMENTS.items():
        cmd = sub.add_parser(name, help=experiment.help, description=experiment.help)
        add_config_arguments(cmd, experiment.config_class(), _EXAMPLES.get(name, ""),
                             experiment.default_config)


def _run(experiment: Experiment, args: argparse.Namespace) -> int:
    if args.config is not None and args.config == experiment.default_config \
            and not Path(args.config).is_file():
        args.config = None  # the shipped config is optional: its values are the defaults
    config, _ = config_from_args(experiment.config_class(), args)
    experiment.runner()(config)
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
    demo = EXPERIMENTS["demo"]
    add_config_arguments(parser, demo.config_class(), _DEMO_EXAMPLES, demo.default_config)


def run_demo(args: argparse.Namespace) -> int:
    return _run(EXPERIMENTS["demo"], args)


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """``pluralign simulate``: ``pluralign experiment dahp``."""
    add_config_arguments(parser, EXPERIMENTS["dahp"].config_class(), _SIMULATE_EXAMPLES)


def run_simulate(args: argparse.Namespace) -> int:
    return _run(EXPERIMENTS["dahp"], args)


_EXAMPLES = {"demo": _DEMO_EXAMPLES, "dahp": _SIMULATE_EXAMPLES}
