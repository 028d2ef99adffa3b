"""Every YAML under configs/ loads through the config class of the command that reads it, and
every command's ``--help`` examples parse and build their config as printed (issue 21)."""

from __future__ import annotations

import fnmatch
import importlib
import re
import shlex
from pathlib import Path

import pytest

from pluralign.cli import COMMANDS, _build_parser, main
from pluralign.config import build_config, config_from_args

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

#: Every shipped YAML (configs/*.yaml) -> the config class that reads it; a new file needs a line.
SHIPPED = {
    "demo*.yaml": "pluralign.experiments.demo.DemoConfig",
    "group_robust.yaml": "pluralign.experiments.group_robust.GroupRobustConfig",
    "identification.yaml": "pluralign.experiments.identification.IdentificationConfig",
    "composition_*.yaml": "pluralign.experiments.composition.CompositionConfig",
    "replicate_*.yaml": "pluralign.experiments.replicate.ReplicateConfig",
    "dahp_env.yaml": "pluralign.experiments.dahp.SimulateConfig",
    "pal_benchmark.yaml": "pluralign.experiments.pal_benchmark.BenchmarkConfig",
    "pal_train.yaml": "pluralign.reward.commands.PalTrainConfig",
    "sft_*.yaml": "pluralign.training.recipe.SFTRecipe",
    "tiny_cpu_sft.yaml": "pluralign.training.recipe.SFTRecipe",
    "tiny_cpu.yaml": "pluralign.training.recipe.TrainRecipe",
    "prism_*.yaml": "pluralign.training.recipe.TrainRecipe",
    "hh_*.yaml": "pluralign.training.recipe.TrainRecipe",
    "community_alignment_*.yaml": "pluralign.training.recipe.TrainRecipe",
}
#: The paper recipes ask for bf16 on a GPU; loading them here, on any machine, turns it off.
_ON_CPU = ["training.bf16=false", "training.use_cpu=true"]
#: What a shipped config leaves to the command line (its header comment says so).
_FROM_COMMAND_LINE = {"pal_train.yaml": ["data=pairs.parquet", "output_dir=runs/pal"]}


def _class(dotted: str) -> type:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _claims(path: Path) -> list[str]:
    return [cls for pattern, cls in SHIPPED.items() if fnmatch.fnmatch(path.name, pattern)]


def test_every_shipped_yaml_is_claimed_by_exactly_one_command():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert files
    for path in files:
        claims = _claims(path)
        assert len(claims) == 1, f"{path.name}: claimed by {claims}; add it to SHIPPED"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_loads_through_its_config_class(path, monkeypatch):
    monkeypatch.chdir(REPO)  # configs name each other relative to the repository
    cls = _class(_claims(path)[0])
    recipe = cls.__name__.endswith("Recipe")
    overrides = (_ON_CPU if recipe else []) + _FROM_COMMAND_LINE.get(path.name, [])
    config = build_config(cls, path.relative_to(REPO), overrides)
    assert isinstance(config, cls)


# ------------------------------------------------------------------------- --help examples
def _invocations() -> list[list[str]]:
    """Every command, subcommand and alias a user types."""
    from pluralign.experiments import EXPERIMENTS

    grouped = {"data": ["inspect", "synthetic", "export"], "pal": ["train", "eval", "adapt"],
               "experiment": [None, *sorted(EXPERIMENTS)]}
    return [[name, *([sub] if sub else [])] for name in sorted(COMMANDS)
            for sub in grouped.get(name, [None])]


def _help(command: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return capsys.readouterr().out


def _examples(text: str) -> list[str]:
    """The command lines of the ``Examples:`` block of a help text, continuations joined."""
    block = text.split("Examples:\n", 1)[1].split("\n\n", 1)[0] if "Examples:\n" in text else ""
    return [line.strip() for line in re.sub(r"\\\n\s*", "", block).splitlines() if line.strip()]


def _pluralign_argv(example: str) -> list[str]:
    words = shlex.split(example, comments=True)
    start = next(i for i, w in enumerate(words) if w in ("pluralign", "pluralign.cli"))
    return words[start + 1:]


@pytest.mark.parametrize("command", _invocations(), ids=" ".join)
def test_help_examples_parse_and_build_their_config_as_printed(command, capsys, monkeypatch):
    """Each example of ``COMMAND --help`` runs the command it is shown under, parses, and (for
    the commands on the one grammar) builds its config: its keys exist and its values are
    valid. (``pluralign experiment dahp --help`` once showed ``pluralign simulate`` examples.)"""
    monkeypatch.chdir(REPO)
    text = _help(command, capsys)
    examples = _examples(text)
    assert examples, f"pluralign {' '.join(command)} --help shows no examples"
    block = text.split("Examples:\n", 1)[1].split("\n\n", 1)[0]
    assert all(len(line) <= 100 for line in block.splitlines()), block  # as printed, unjoined
    for example in examples:
        argv = _pluralign_argv(example)
        # an action shows its own command's examples (data's actions share one list; pal's
        # start from `pluralign data synthetic`)
        assert argv[0] in COMMANDS and (argv[0] == command[0] or command[0] == "pal"), example
        if command[0] == "experiment" and len(command) == 2:
            assert argv[:2] == command, f"{command}: example {example!r}"
        if "--help" in argv:
            continue
        args, extra = _build_parser(argv).parse_known_args(argv)
        assert all("=" in e for e in extra), example
        if str(getattr(args, "config", None)).startswith("runs/"):
            continue  # reads a run folder an earlier example writes: run in sequence by
            # tests/test_cli_examples.py (data, pal)
        if hasattr(args, "config_class"):
            args.overrides = [*args.overrides, *extra]
            config, _ = config_from_args(args.config_class, args)
            assert isinstance(config, args.config_class), example


@pytest.mark.parametrize("path", sorted((REPO / "docs" / "results").glob("*/config.yaml")),
                         ids=lambda p: p.parent.name)
def test_documented_runs_read_back(path, monkeypatch):
    """The run folders kept under docs/results are accepted by `--config` as they are."""
    monkeypatch.chdir(REPO)
    name = path.parent.name
    pattern = next((p for p in ("replicate_*.yaml", "group_robust.yaml", "composition_*.yaml",
                                "identification.yaml")
                    if name.startswith(p.split("_")[0].split(".")[0])), "demo*.yaml")
    cls = _class(SHIPPED[pattern])
    assert isinstance(build_config(cls, path.relative_to(REPO)), cls)


def test_readme_shows_the_train_and_demo_configs_as_they_are():
    """The side-by-side excerpts in README's config section quote their files line by line."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<pre>\n(.*?)</pre>", readme, flags=re.S)
    assert len(blocks) == 2
    for block, name in zip(blocks, ("tiny_cpu.yaml", "demo.yaml"), strict=True):
        lines = {line.split("#")[0].rstrip() for line in
                 (CONFIGS / name).read_text(encoding="utf-8").splitlines()}
        for line in block.splitlines():
            quoted = line.split("#")[0].rstrip()
            if quoted and "..." not in quoted:
                assert quoted in lines, f"README's {name} excerpt: {quoted!r}"
