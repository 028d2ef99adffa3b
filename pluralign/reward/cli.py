"""``pluralign pal train | eval | adapt``: argument parsing plus one call into
:mod:`pluralign.reward.commands` (each action is described by its config dataclass there).

The synthetic PAL benchmark is an experiment: ``pluralign experiment pal_benchmark``
(:mod:`pluralign.experiments.pal_benchmark`).
"""

from __future__ import annotations

import argparse

from pluralign.config import add_config_arguments, config_from_args
from pluralign.errors import ConfigError
from pluralign.runs import run_guarded

_TRAIN = """Examples:
  pluralign data synthetic population.n_annotators=40 population.n_prompts=20 \\
      population.pairs_per_annotator=40 --output-dir runs/pop
  pluralign pal train data=runs/pop pal.n_prototypes=3 pal.epochs=5 --output-dir runs/pal
  pluralign pal train data=runs/pop kind=bt bt.epochs=5 --output-dir runs/bt
  pluralign pal train --config configs/pal_train.yaml data=runs/pop/pairs.parquet \\
      data.test_size=0.2 --output-dir runs/pal-paper
  pluralign pal train --config runs/pal/config.yaml progress=false --output-dir runs/pal-again
  pluralign pal train data=synthetic data.population.n_prompts=20 pal.epochs=5 \\
      --output-dir runs/pal-synthetic

data.test_size of the pairs (default 0.1) are held out for the held-out accuracy; the model
sections pal and bt are those of `pluralign experiment pal_benchmark`."""

_EVAL = """Examples:
  pluralign pal eval model=runs/pal data=runs/pop --output-dir runs/pal-eval
  pluralign pal eval model=runs/pal data=tests/fixtures/generic/pairs.jsonl unknown=average
  pluralign pal eval model=runs/bt data=runs/pop data.options.limit=200"""

_ADAPT = """Examples:
  pluralign pal adapt model=runs/pal data=tests/fixtures/generic/pairs.jsonl n=2 \\
      --output-dir runs/pal-adapted
  pluralign pal eval model=runs/pal-adapted data=tests/fixtures/generic/pairs.jsonl"""


def _actions() -> dict[str, tuple[type, str, str]]:
    from pluralign.reward.commands import PalAdaptConfig, PalEvalConfig, PalTrainConfig

    return {
        "train": (PalTrainConfig, "train a PAL or Bradley-Terry reward model", _TRAIN),
        "eval": (PalEvalConfig, "pairwise accuracy of a saved reward model", _EVAL),
        "adapt": (PalAdaptConfig, "fit new users' mixture weights (few-shot)", _ADAPT),
    }


def add_pal_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pluralign pal`` (actions train, eval, adapt)."""
    actions = _actions()
    parser.epilog = "Examples:\n" + "\n".join(
        examples.split("\n\n")[0].removeprefix("Examples:\n") for _, _, examples in
        actions.values()) + "\n  pluralign experiment pal_benchmark --output-dir runs/bench"
    sub = parser.add_subparsers(dest="pal_command", metavar="ACTION")
    for name, (cls, help_text, examples) in actions.items():
        add_config_arguments(sub.add_parser(name, help=help_text, description=help_text),
                             cls, examples)


def run_pal(args: argparse.Namespace) -> int:
    """Dispatch ``pluralign pal ACTION``."""
    from pluralign.reward.commands import (
        adapt_reward_model,
        evaluate_reward_model,
        train_reward_model,
    )

    name = getattr(args, "pal_command", None)
    if name is None:
        raise ConfigError("choose an action: pluralign pal train|eval|adapt (see pluralign pal "
                          "--help)")
    config, _ = config_from_args(_actions()[name][0], args)
    run = {"train": train_reward_model, "eval": evaluate_reward_model,
           "adapt": adapt_reward_model}[name]
    run_guarded(config, run)
    return 0
