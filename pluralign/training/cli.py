"""``pluralign sft`` and ``pluralign train``: argument parsing plus one call of
:func:`pluralign.training.recipe.run_recipe` (the recipe sections are documented there)."""

from __future__ import annotations

import argparse

from pluralign.config import add_config_arguments, config_from_args

_EXAMPLES = """Examples:
  pluralign {cmd} --config configs/tiny_cpu{sft}.yaml
  pluralign {cmd} --config configs/tiny_cpu{sft}.yaml training.max_steps=20 --output-dir runs/x
  pluralign {cmd} --config configs/tiny_cpu{sft}.yaml resume=true     # from the last checkpoint
  pluralign {cmd} --config configs/tiny_cpu{sft}.yaml model=runs/tiny_cpu_sft data.test_size=0.1
  accelerate launch --num_processes 2 -m pluralign.cli {cmd} --config configs/tiny_cpu{sft}.yaml
  torchrun --nproc_per_node 2 -m pluralign.cli {cmd} --config configs/tiny_cpu{sft}.yaml  # CPU
"""


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pluralign train``."""
    from pluralign.training.recipe import TrainRecipe

    add_config_arguments(parser, TrainRecipe, _EXAMPLES.format(cmd="train", sft=""))


def add_sft_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pluralign sft``."""
    from pluralign.training.recipe import SFTRecipe

    add_config_arguments(parser, SFTRecipe, _EXAMPLES.format(cmd="sft", sft="_sft"))


def run_train(args: argparse.Namespace) -> int:
    """``pluralign train``: preference optimisation (DPO / MixDPO / ...) from a recipe."""
    from pluralign.training.recipe import TrainRecipe, run_recipe

    run_recipe(*config_from_args(TrainRecipe, args))
    return 0


def run_sft(args: argparse.Namespace) -> int:
    """``pluralign sft``: supervised fine-tuning on prompt + chosen from a recipe."""
    from pluralign.training.recipe import SFTRecipe, run_recipe

    run_recipe(*config_from_args(SFTRecipe, args))
    return 0
