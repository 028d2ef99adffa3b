"""The one config reader and CLI grammar: overrides, sections, help, layering, one name."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pluralign.cli import COMMANDS, main
from pluralign.config import apply_overrides, build_config, config_from_dict
from pluralign.errors import ConfigError
from pluralign.objectives import OBJECTIVES, build_objective
from pluralign.training import PreferenceConfig
from pluralign.training.recipe import ModelConfig, TrainRecipe

PACKAGE = Path(__file__).resolve().parents[1] / "pluralign"

key = st.from_regex(r"[a-z][a-z_]{0,6}", fullmatch=True)


@given(st.lists(key, min_size=1, max_size=4), st.integers())
def test_a_dotted_override_sets_exactly_that_leaf(parts, value):
    out = apply_overrides({"other": 1}, [f"{'.'.join(parts)}={value}"])
    node = out
    for part in parts:
        node = node[part]
    assert node == value
    if parts[0] != "other":
        assert out["other"] == 1


@pytest.mark.parametrize("bad", ["novalue", "=1", "--key=1"])
def test_overrides_not_of_the_form_key_value_are_refused(bad):
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, [bad])


def test_sections_are_built_as_dataclasses_and_unknown_keys_are_named(tmp_path):
    recipe = config_from_dict(TrainRecipe, {"model": "runs/sft", "data": {"source": "x.jsonl"},
                                            "training": {"objective": "mixdpo",
                                                         "strength": "gamma"}})
    assert recipe.model == ModelConfig(name_or_path="runs/sft")
    assert isinstance(recipe.training, PreferenceConfig)
    with pytest.raises(ConfigError, match=r"TrainRecipe\.model: unknown option\(s\) sise"):
        config_from_dict(TrainRecipe, {"model": {"sise": 1}}, "TrainRecipe")
    path = tmp_path / "r.yaml"
    path.write_text("model: runs/sft\ndata: {source: synthetic}\n")
    # a dotted override reaches into a section written as a scalar
    recipe = build_config(TrainRecipe, path, ["model.tokenizer=tok"], output_dir=tmp_path / "o")
    assert (recipe.model.name_or_path, recipe.model.tokenizer) == ("runs/sft", "tok")
    assert recipe.training.output_dir == str(tmp_path / "o")


def test_a_shorthand_section_then_its_dotted_keys_on_the_command_line():
    """``model=DIR model.ref_model=REF`` (evaluate's spelling): the second reaches into the
    section the first wrote as a scalar."""
    recipe = build_config(TrainRecipe, overrides=["model=runs/sft", "model.ref_model=runs/ref",
                                                  "data=pairs.jsonl", "data.test_size=0.1"])
    assert (recipe.model.name_or_path, recipe.model.ref_model) == ("runs/sft", "runs/ref")
    assert (recipe.data.source, recipe.data.test_size) == ("pairs.jsonl", 0.1)


def test_help_shows_a_sections_own_defaults(capsys):
    """An experiment's training section has its own defaults; --help shows those, not the
    class's (train --help shows the class's)."""
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    demo = capsys.readouterr().out
    assert "training.learning_rate = 0.0003" in demo and "model.tokenizer_vocab_size = 400" in demo
    assert "data.source = 'synthetic'" in demo and "data.population.n_annotators = 60" in demo
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "training.learning_rate = 5e-07" in capsys.readouterr().out


def test_strength_shape_reaches_gamma_under_one_name():
    """YAML `training.strength_shape` -> PreferenceConfig.strength_shape -> MixDPOSettings
    .strength_shape -> Gamma(shape=...): three hops, and nothing renames it on the way."""
    recipe = config_from_dict(TrainRecipe, {"training": {"objective": "mixdpo",
                                                         "strength": "gamma",
                                                         "strength_shape": 3.5}})
    strength = recipe.training.build_objective().strength
    assert strength.params()["shape"] == pytest.approx(3.5)
    with pytest.raises(ConfigError, match="does not use strength_mu"):
        PreferenceConfig(objective="mixdpo", strength="gamma", strength_mu=-2.3)


def test_every_objective_setting_is_a_documented_preference_config_field():
    fields = {f.name: f for f in dataclasses.fields(PreferenceConfig)}
    for name, cls in OBJECTIVES.items():
        for f in dataclasses.fields(cls.Settings):
            assert f.name in fields and fields[f.name].metadata["help"], (name, f.name)
            assert name in fields[f.name].metadata["help"]
        assert isinstance(cls.columns, tuple)
    assert OBJECTIVES["corrected_dpo"].columns == ("pair_variance",)
    assert build_objective("agreement", agreement_num_types=3).columns == ("agreement",)


def test_train_help_lists_the_preference_config_fields(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in ("training.strength_shape", "training.learning_rate", "training.objective",
                 "training.precompute_ref_log_probs", "model.name_or_path", "data.source"):
        assert name in text, name
    assert "Initial Gamma shape k > 0" in text


def _every_command() -> list[list[str]]:
    """Each command and subcommand a user runs (``pluralign experiment NAME`` for every shipped
    experiment)."""
    from pluralign.experiments import EXPERIMENTS

    grouped = {"data": ["inspect", "synthetic", "export"], "pal": ["train", "eval", "adapt"],
               "experiment": sorted(EXPERIMENTS)}
    return [[name, *([sub] if sub else [])] for name in sorted(COMMANDS)
            for sub in grouped.get(name, [None])]


@pytest.mark.parametrize("command", _every_command(), ids=" ".join)
def test_every_command_takes_config_and_output_dir(command, capsys):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]  # the usage line(s) argparse prints first
    assert "--config" in usage and "--output-dir" in usage and "key=value" in usage, usage


def _imports(path: Path) -> set[str]:
    """Every pluralign module ``path`` imports, at module level or lazily inside a function
    (``from pluralign import x`` counts as ``pluralign.x`` for a submodule x; relative imports
    are resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ["pluralign", *path.relative_to(PACKAGE).parent.parts]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            if module == "pluralign":  # submodules only, not names such as __version__
                names.update(f"pluralign.{a.name}" for a in node.names
                             if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").is_file())
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


#: README "What is in the box": imports only point down this table. Shared utilities (errors,
#: atomic io, validation, the config reader, the run-folder writer, the package root) import only
#: each other and may be imported from any layer ("config/runs <- every layer's CLI"); every
#: ``<layer>/cli.py`` is part of the ``pluralign`` command, the top.
_SHARED = {"pluralign", "errors", "io", "validation", "config", "runs"}
_LAYER = {"numerics": 1, "strength": 2, "objectives": 3, "group_robust": 3, "data": 4,
          "training": 5, "reward": 5, "evaluation": 6, "social_choice": 6, "envs": 6,
          "experiments": 7, "cli": 8}


def _layer(parts: list[str]) -> int:
    """Layer of the module ``pluralign.<parts>`` (0 = shared utility)."""
    top = parts[0] if parts else "pluralign"
    if top in _SHARED or top == "__init__":
        return 0
    assert top in _LAYER, f"pluralign.{top} is in no layer; add it to the README table and here"
    return _LAYER["cli"] if parts[-1] == "cli" else _LAYER[top]


def test_imports_only_point_down_the_layer_table():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        own = _layer(list(rel))
        for module in sorted(m for m in _imports(path) if m.split(".")[0] == "pluralign"):
            theirs = _layer(module.split(".")[1:])
            if theirs > own or (own == 0 and theirs > 0):
                upward.append(f"{'/'.join(rel)}.py (layer {own}) imports {module} "
                              f"(layer {theirs})")
    assert not upward, "imports must point down the layer table:\n" + "\n".join(upward)


def test_library_layers_never_import_experiments_and_reports_live_in_runs():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("experiments/") or rel == "cli.py":
            continue
        imported = _imports(path)
        assert not any(m.startswith("pluralign.experiments") for m in imported), rel
        if rel.split("/")[0] in ("reward", "envs", "social_choice", "data", "training"):
            assert not any(m.startswith("pluralign.evaluation") for m in imported), rel


def test_a_dotted_override_changes_one_entry_of_a_default_mapping():
    """``methods.DPO.beta=0.2`` on the command line used to replace the whole default ``methods``
    mapping with ``{"DPO": {"beta": 0.2}}``; it now edits that entry and keeps the others."""
    from pluralign.config import build_config
    from pluralign.experiments.demo import DemoConfig

    default = DemoConfig().methods
    changed = build_config(DemoConfig, overrides=["methods.DPO.beta=0.2"]).methods
    assert set(changed) == set(default) and len(default) > 1
    assert changed["DPO"] == {**default["DPO"], "beta": 0.2}
    assert {k: v for k, v in changed.items() if k != "DPO"} == {
        k: v for k, v in default.items() if k != "DPO"}
    assert DemoConfig().methods == default  # the default itself is not mutated
