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
from pluralign.objectives import OBJECTIVES, Column, build_objective
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
    assert "training.learning_rate: float = 0.0003" in demo
    assert "model.tokenizer_vocab_size: int = 400" in demo
    assert "data.source: str | None = 'synthetic'" in demo
    assert "data.population.n_annotators: int = 60" in demo
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "training.learning_rate: float = 5e-07" in capsys.readouterr().out


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
    assert build_objective("dpo").columns() == ()
    assert build_objective("corrected_dpo").columns() == (Column("pair_variance"),)
    assert build_objective("agreement", agreement_num_types=3).columns() == (Column("agreement"),)
    assert build_objective("group_mixdpo", group_by="attr.age").columns() == (
        Column("group", ids=True, ids_from="attr.age"),)


def test_train_help_lists_the_preference_config_fields(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in ("training.strength_shape", "training.learning_rate", "training.objective",
                 "training.precompute_ref_log_probs", "model.name_or_path", "data.source"):
        assert name in text, name
    assert "Initial Gamma shape k > 0" in text
    # data.options: each format's options with type, default and help, not an untyped {}
    assert "data.options = {}" not in text
    for line in ("  data.options: dict[str, Any] = {}", "    every format:",
                 "      data.options.limit: int | None = None",
                 "    format prism (PrismOptions):",
                 "      data.options.pairs: str = 'chosen_vs_rest'",
                 "    format community_alignment (CommunityAlignmentOptions):",
                 "      data.options.language: str | None = None",
                 "    formats jsonl, csv, parquet, hf (GenericOptions):",
                 "      data.options.column_map: dict[str, str] | None = None"):
        assert line in text.splitlines(), line
    assert "keep only conversations in this assigned language" in text


def test_a_section_shorthand_takes_dotted_overrides_after_it(tmp_path):
    """data=PATH is data.source=PATH, so data.options.* may follow it; a later scalar replaces
    the section as any later override does."""
    from pluralign.config import read_config

    values = read_config(TrainRecipe, None, ["data=pairs.jsonl", "data.options.limit=10",
                                             "model=runs/sft", "model.ref_model=runs/ref"])
    assert values["data"] == {"source": "pairs.jsonl", "options": {"limit": 10}}
    assert values["model"] == {"name_or_path": "runs/sft", "ref_model": "runs/ref"}
    later = read_config(TrainRecipe, None, ["data.options.limit=10", "data=pairs.jsonl"])
    assert later["data"] == {"source": "pairs.jsonl"}


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


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    where = root.parent.joinpath(*name.split("."))
    return where.with_suffix(".py").is_file() or (where / "__init__.py").is_file()


def _imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """The modules of the package ``root`` that ``path`` imports, at module level or lazily inside
    a function: ``import a.b`` and ``from a import b`` (``b`` a submodule) import ``a.b``,
    ``from a import name`` (anything else) imports ``a``, i.e. its ``__init__``; relative imports
    are resolved. The implicit import of a module's parent packages is no edge, so a package
    ``__init__`` that re-exports its submodules is no cycle with them."""
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                parts = package.split(".")
                source = ".".join([*parts[:len(parts) - node.level + 1], *filter(None, [source])])
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                names.add(sub if _is_module(sub, root) else source)
    return {n for n in names if n.split(".")[0] == root.name and n != module}


def _import_cycles(root: Path) -> list[str]:
    """Every import cycle among the modules of the package ``root`` (edges as :func:`_imports`),
    one per strongly connected component, written ``a -> b -> a``."""
    import networkx as nx

    graph = nx.DiGraph()
    for path in root.rglob("*.py"):
        module = _module_name(path, root)
        graph.add_node(module)
        graph.add_edges_from((module, other) for other in _imports(path, root))
    cycles = []
    for component in nx.strongly_connected_components(graph):
        if len(component) > 1:
            edges = nx.find_cycle(graph.subgraph(component), source=min(component))
            cycles.append(" -> ".join([*(a for a, _ in edges), edges[0][0]]))
    return sorted(cycles)


def test_no_import_cycles_among_pluralign_modules():
    cycles = _import_cycles(PACKAGE)
    assert not cycles, "import cycles (lazy imports included):\n" + "\n".join(cycles)


def test_the_cycle_check_finds_planted_cycles_and_passes_a_re_exporting_package(tmp_path):
    root = tmp_path / "planted"
    root.mkdir()
    (root / "__init__.py").write_text("from planted.a import f\nfrom planted.b import g\n")
    (root / "a.py").write_text("from planted import b\n\n\ndef f():\n    return b.g()\n")
    (root / "b.py").write_text("def g():\n    return 1\n")
    assert _import_cycles(root) == []          # __init__ -> a -> b and __init__ -> b: no cycle
    (root / "b.py").write_text("def g():\n    from planted.a import f\n\n    return f\n")
    assert _import_cycles(root) == ["planted.a -> planted.b -> planted.a"]   # lazy, a <-> b
    (root / "b.py").write_text("from .a import f\n")
    assert _import_cycles(root) == ["planted.a -> planted.b -> planted.a"]   # relative
    (root / "b.py").write_text("from . import f\n")    # a name from its own package's __init__
    assert len(_import_cycles(root)) == 1 and "planted ->" in _import_cycles(root)[0]
    (root / "b.py").write_text("import planted.a\n")
    assert _import_cycles(root) == ["planted.a -> planted.b -> planted.a"]


#: README "What is in the box": imports only point down this table. Shared utilities (errors,
#: atomic io, validation, the config reader, the run-folder writer, the package root) import only
#: each other and may be imported from any layer ("config/runs <- every layer's CLI"); every
#: ``<layer>/cli.py`` is part of the ``pluralign`` command, the top.
_SHARED = {"pluralign", "errors", "io", "validation", "config", "runs"}
_LAYER = {"numerics": 1, "panel": 1, "strength": 2, "objectives": 3, "data": 4,
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
