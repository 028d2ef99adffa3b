"""Property tests over config shapes and values of several commands (issue 15): whatever the
config file and the ``key=value`` overrides hold, a command exits 0 or 2 with a one-line error of
its own, never a traceback and never an argparse usage error (the generated grammar is well
formed), and the files of a successful run follow the umask. The helpers live in cli_fuzz.py.

Each test runs :data:`cli_fuzz.MAX_EXAMPLES` generated cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cli_fuzz import (
    CLI_SETTINGS,
    ConfigCase,
    assert_clean,
    assert_umask,
    config_cases,
    field_values,
)
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_training_cli import TINY
from tiny_inputs import save_tiny_population_and_model

from pluralign.config import set_dotted

PRISM = Path(__file__).parent / "fixtures" / "prism"

pytestmark = pytest.mark.usefixtures("one_thread")


def _names(*good: str) -> st.SearchStrategy:
    """Good names, junk, a single name as a string and lists of names."""
    return st.one_of(st.sampled_from(list(good)), field_values(),
                     st.lists(st.sampled_from([*good, "attr.nope"]), max_size=2))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Inputs of the fuzzed commands: a survey, a margins table, a saved population, a tiny model
    folder (model + tokenizer) and a run folder with a metrics.json."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    pd.DataFrame([{"question": f"Q{q}", "type": t, "answer": rng.choice(["A", "B", "C"]),
                   "weight": 1.0} for q in range(2) for t in ("Dem", "Rep") for _ in range(12)]
                 ).to_csv(root / "survey.csv", index=False)
    pd.DataFrame({"margin": rng.normal(0.5, 1.0, 60), "attr.age": rng.choice(["a", "b"], 60),
                  "annotator_id": rng.choice(list("uvwxyz"), 60)}
                 ).to_csv(root / "margins.csv", index=False)
    save_tiny_population_and_model(root)
    return {"survey": root / "survey.csv", "margins": root / "margins.csv",
            "pop": root / "pop", "model": root / "model"}


@CLI_SETTINGS
@given(case=config_cases({
    "data.options.pairs": st.sampled_from(["by_score", "chosen_vs_rest", "all"]),
    "data.options.min_score_gap": field_values(), "data.options.chat": field_values(),
    "data.options.attributes": _names("age", "gender"),
    "data.options.column_map": field_values(), "data.options.limit": field_values(),
    "data.options.split": field_values(), "data.format": field_values(),
    "by": _names("age", "gender"), "min_pairs": field_values(),
}))
def test_data_inspect_configs(tmp_path_factory, case):
    """Loader options are data.options.* of the command's config, in --config or key=value."""
    folder = tmp_path_factory.mktemp("inspect")
    case.in_file = {"data.source": str(PRISM), "examples": 0, **case.in_file}
    assert_clean(["data", "inspect", *case.argv(folder)])


@CLI_SETTINGS
@given(case=config_cases({
    "population.n_annotators": st.integers(1, 6), "population.pairs_per_annotator": field_values(),
    "population.strength": st.sampled_from(["gamma", "lognormal", "point", "x"]),
    "population.homogeneous": field_values(), "population.type_spread": field_values(),
    "population.seed": field_values(),
}))
def test_data_synthetic_configs(tmp_path_factory, case):
    folder = tmp_path_factory.mktemp("synthetic")
    case.in_file = {"population.n_prompts": 3, **case.in_file}
    assert_clean(["data", "synthetic", *case.argv(folder, ["--output-dir", str(folder / "run")])],
                 folder / "run")


@CLI_SETTINGS
@given(case=config_cases({
    "floor": field_values(), "eps": field_values(), "temperature": field_values(),
    "link": st.sampled_from(["bt", "thurstone", "probit"]), "types": _names("Dem", "Rep"),
    "skip_incomplete": field_values(), "question": _names("Q0", "Q1"), "options": field_values(),
}))
def test_nbc_configs(files, tmp_path_factory, case):
    folder = tmp_path_factory.mktemp("nbc")
    assert_clean(["nbc", *case.argv(folder, [f"table={files['survey']}", "--output-dir",
                                             str(folder / "run")])], folder / "run")


@CLI_SETTINGS
@given(case=config_cases({
    "column": _names("margin", "annotator_id"), "family": st.sampled_from(["gamma", "lognormal"]),
    "by": _names("attr.age"), "cluster": _names("annotator_id"), "n_boot": field_values(),
    "seed": field_values(), "runs": field_values(), "compare": field_values(),
}))
def test_diagnose_configs(files, tmp_path_factory, case):
    folder = tmp_path_factory.mktemp("diagnose")
    assert_clean(["diagnose", *case.argv(folder, [f"margins={files['margins']}", "--output-dir",
                                                  str(folder / "run")])], folder / "run")


@CLI_SETTINGS
@given(case=config_cases({
    "by": _names("attr.age", "attr.gender"), "batch_size": field_values(),
    "n_boot": field_values(), "max_length": field_values(), "max_prompt_length": field_values(),
    "seed": field_values(), "baseline_margins": field_values(), "model.tokenizer": field_values(),
}))
def test_evaluate_configs(files, tmp_path_factory, case):
    folder = tmp_path_factory.mktemp("evaluate")
    fixed = [f"model={files['model']}", f"data={files['pop']}", "--output-dir",
             str(folder / "run")]
    assert_clean(["evaluate", *case.argv(folder, fixed)], folder / "run")


_TRAIN_FIELDS = {
    "training.learning_rate": field_values(), "training.beta": field_values(),
    "training.per_device_train_batch_size": field_values(),
    "training.objective": st.sampled_from(["dpo", "mixdpo", "agreement"]),
    "training.strength": st.sampled_from(["gamma", "lognormal", "point"]),
    "training.max_length": field_values(), "training.strength_learning_rate": field_values(),
    "data.test_size": field_values(), "data.population.n_annotators": field_values(),
    "model.tokenizer_vocab_size": field_values(), "model.config": field_values(),
    "model.lora": field_values(), "resume": field_values(), "overwrite": field_values(),
}


def test_config_case_leaves_the_sections_it_is_given_alone(tmp_path):
    """A shared recipe section with a generated sub-key once leaked that value (None) into
    test_training_cli.TINY, failing later tests in the same worker."""
    shared = {"n_annotators": 6, "seed": 0}
    case = ConfigCase({"data.population": shared, "data.population.n_annotators": None})
    argv = case.argv(tmp_path)
    assert shared == {"n_annotators": 6, "seed": 0}
    written = yaml.safe_load(Path(argv[1]).read_text(encoding="utf-8"))
    assert written == {"data": {"population": {"n_annotators": None, "seed": 0}}}


@CLI_SETTINGS
@given(case=config_cases(_TRAIN_FIELDS))
def test_train_configs(tmp_path_factory, case):
    """A tiny recipe, one step: generated values on top of it (valid ones train)."""
    folder = tmp_path_factory.mktemp("train")
    base = {f"{section}.{key}": value for section in ("model", "data", "training")
            for key, value in TINY[section].items()}
    case.in_file = {**base, "training.max_steps": 1, **case.in_file}
    assert_clean(["train", *case.argv(folder, ["--output-dir", str(folder / "run")])],
                 folder / "run")


@CLI_SETTINGS
@given(case=config_cases({
    "environment.num_states": field_values(), "environment.num_actions": field_values(),
    "environment.beta": field_values(), "environment.shifts": field_values(),
    "experiment.policy": st.sampled_from(["tabular", "mlp"]), "experiment.lr": field_values(),
    "experiment.methods": field_values(), "experiment.alphas": field_values(),
}))
def test_experiment_dahp_configs(tmp_path_factory, case):
    """The DAHP environment at a tiny size (few states, pairs and steps)."""
    folder = tmp_path_factory.mktemp("dahp")
    case.in_file = {"environment.num_states": 4, "environment.num_actions": 6,
                    "environment.shifts": [-1, 0, 1], "experiment.num_pairs": 300,
                    "experiment.num_paired": 300, "experiment.num_full": 300,
                    "experiment.steps": 3, "experiment.hidden": 4, **case.in_file}
    assert_clean(["experiment", "dahp", *case.argv(folder, ["--output-dir",
                                                            str(folder / "run")])],
                 folder / "run")


_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                               st.text(max_size=5)),
                     lambda inner: st.one_of(st.lists(inner, max_size=3),
                                             st.dictionaries(st.text(max_size=4), inner,
                                                             max_size=3)), max_leaves=8)


@CLI_SETTINGS
@given(metrics=st.one_of(_JSON, st.dictionaries(
    st.sampled_from(["title", "summary", "methods", "figures", "tables", "win_rates", "claim",
                     "failed_items", "runtime_seconds", "notes"]), _JSON, max_size=4)))
def test_report_on_any_metrics_json(tmp_path_factory, metrics):
    run = tmp_path_factory.mktemp("report")
    (run / "metrics.json").write_text(json.dumps(metrics))
    assert_clean(["report", "--output-dir", str(run)], run)


def test_written_files_follow_the_umask(files, tmp_path):
    """Issue 15 #11: files written through atomic_path were 0600 whatever the umask."""
    import os

    old = os.umask(0o022)
    try:
        assert_clean(["nbc", f"table={files['survey']}", "--output-dir", str(tmp_path / "a")])
        os.umask(0o077)
        assert_clean(["nbc", f"table={files['survey']}", "--output-dir", str(tmp_path / "b")])
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b" / "metrics.json").stat().st_mode & 0o777 == 0o600
    os.umask(0o077)
    try:
        assert_umask(tmp_path / "b")
    finally:
        os.umask(old)


# ------------------------------------------------------------ data export, pal, experiments

def _clean(base_case: bool, argv: list[str], out_dir: Path) -> None:
    """:func:`assert_clean`; the base case (nothing generated) must run (exit 0)."""
    result = assert_clean(argv, out_dir)
    assert result.code == 0 or not base_case, result.err

#: Fewer examples for commands whose valid cases train (each still tiny).
FEW = settings(CLI_SETTINGS, max_examples=6)

#: A demo / group-robust experiment at the smallest size that runs end to end.
_TINY_EXPERIMENT = {
    "threads": 1, "progress": False, "n_boot": 5,
    "model": {"name_or_path": "tiny", "tokenizer_vocab_size": 300,
              "config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 32}},
    "data.source": "synthetic", "data.population.n_annotators": 8,
    "data.population.pairs_per_annotator": 4,
    "data.population.n_prompts": 4, "data.population.text_style": "compact",
    "data.test_size": 0.3,
    "sft": {"max_steps": 1, "per_device_train_batch_size": 8, "max_length": 32,
            "max_prompt_length": 16, "use_cpu": True, "learning_rate": 1e-3},
    "training.max_steps": 1, "training.per_device_train_batch_size": 8,
    "training.max_length": 32, "training.max_prompt_length": 16, "training.use_cpu": True,
    "training.logging_steps": 1,
}


@FEW
@example(case=ConfigCase())
@given(case=config_cases({
    "to": st.sampled_from(["trl-jsonl", "parquet", "hf", "xml"]), "data.test_size": field_values(),
    "data.options.limit": field_values(), "data.format": field_values(),
    "data.options.attributes": _names("age", "gender"),
}))
def test_data_export_configs(tmp_path_factory, case):
    base_case = not case.in_file and not case.overrides
    folder = tmp_path_factory.mktemp("export")
    case.in_file = {"data.source": str(PRISM), **case.in_file}
    out = folder / "run"
    _clean(base_case, ["data", "export", *case.argv(folder, ["--output-dir", str(out)])], out)


@pytest.fixture(scope="module")
def reward_model(files, tmp_path_factory) -> dict[str, Path]:
    """A PAL reward model trained by `pal train` (one epoch) on half the annotators of the saved
    population (``seen``); the other half (``unseen``) is what `pal adapt` reads."""
    from pluralign.data.config import DataConfig, load_data
    from pluralign.data.splits import split_by_annotator

    root = tmp_path_factory.mktemp("pal-model")
    split = split_by_annotator(load_data(DataConfig(source=str(files["pop"])))[0],
                               test_size=0.5, seed=0)
    split["train"].to_parquet(root / "seen.parquet")
    split["test"].to_parquet(root / "unseen.parquet")
    assert_clean(["pal", "train", f"data={root / 'seen.parquet'}", "pal.n_prototypes=2",
                  "pal.epochs=1", "progress=false", f"cache_dir={files['pop'].parent / 'cache'}",
                  "--output-dir", str(root / "model")])
    assert (root / "model" / "config.json").is_file()
    return {"model": root / "model", "seen": root / "seen.parquet",
            "unseen": root / "unseen.parquet"}


@FEW
@example(case=ConfigCase())
@given(case=config_cases({
    "kind": st.sampled_from(["pal", "bt", "x"]), "pal.n_prototypes": field_values(),
    "pal.epochs": st.one_of(st.integers(1, 2), field_values()), "bt.epochs": field_values(),
    "data.test_size": field_values(), "pal.lr": field_values(),
}))
def test_pal_train_configs(files, tmp_path_factory, case):
    base_case = not case.in_file and not case.overrides
    folder = tmp_path_factory.mktemp("pal")
    case.in_file = {"progress": False, "cache_dir": str(files["pop"].parent / "cache"),
                    "data.source": str(files["pop"]), **case.in_file}
    out = folder / "run"
    _clean(base_case, ["pal", "train", *case.argv(folder, ["--output-dir", str(out)])], out)


@FEW
@example(action="eval", case=ConfigCase())
@example(action="adapt", case=ConfigCase())
@given(action=st.sampled_from(["eval", "adapt"]), case=config_cases({
    "unknown": st.sampled_from(["error", "average", "x"]), "n": field_values(),
    "model": field_values(), "data.test_size": field_values(),
}))
def test_pal_eval_and_adapt_configs(files, reward_model, tmp_path_factory, action, case):
    base_case = not case.in_file and not case.overrides
    folder = tmp_path_factory.mktemp("pal-use")
    if action == "eval":
        case.overrides = [o for o in case.overrides if not o.startswith("n=")]
        case.in_file.pop("n", None)
    else:
        case.overrides = [o for o in case.overrides if not o.startswith("unknown=")]
        case.in_file.pop("unknown", None)
    case.in_file = {"progress": False, "cache_dir": str(files["pop"].parent / "cache"),
                    "model": str(reward_model["model"]),
                    "data.source": str(reward_model["seen" if action == "eval" else "unseen"]),
                    **case.in_file}
    out = folder / "run"
    _clean(base_case, ["pal", action, *case.argv(folder, ["--output-dir", str(out)])], out)


@FEW
@example(name="demo", case=ConfigCase())
@example(name="group_robust", case=ConfigCase())
@given(name=st.sampled_from(["demo", "group_robust"]), case=config_cases({
    "seed": field_values(), "n_boot": field_values(), "threads": field_values(),
    "data.population.n_annotators": field_values(), "training.learning_rate": field_values(),
    "methods": field_values(), "subgroups": _names("ctx.domain", "attr.education"),
    "data.test_size": field_values(), "overwrite": field_values(),
}))
def test_population_experiment_configs(tmp_path_factory, name, case):
    """demo and group_robust at a tiny size (one SFT and one training step per method)."""
    base_case = not case.in_file and not case.overrides
    folder = tmp_path_factory.mktemp(name)
    base = dict(_TINY_EXPERIMENT)
    if name == "group_robust":
        base.pop("n_boot")
        base["data.population.demographic_signal"] = 0.0
        base["data.population.n_types"] = 2  # the experiment is defined for two groups
        case.overrides = [o for o in case.overrides if not o.startswith("subgroups=")]
        case.in_file.pop("subgroups", None)
    case.in_file = {**base, **case.in_file}
    out = folder / "run"
    _clean(base_case, ["experiment", name, *case.argv(folder, ["--output-dir", str(out)])], out)


@FEW
@example(case=ConfigCase())
@given(case=config_cases({
    "attribute": _names("attr.gender", "attr.age"), "split": field_values(),
    "data.test_size": field_values(), "n_boot": field_values(), "seed": field_values(),
    "training.learning_rate": field_values(),
}))
def test_experiment_composition_configs(files, tmp_path_factory, case):
    base_case = not case.in_file and not case.overrides
    folder = tmp_path_factory.mktemp("composition")
    case.in_file = {"model": str(files["model"]), "data.source": str(files["pop"]),
                    "data.test_size": 0.5, "attribute": "attr.gender", "n_boot": 5,
                    "max_length": 32, "max_prompt_length": 16, "training.max_steps": 1,
                    "training.use_cpu": True, **case.in_file}
    out = folder / "run"
    _clean(base_case, ["experiment", "composition",
                       *case.argv(folder, ["--output-dir", str(out)])], out)


@FEW
@example(case=ConfigCase())
@given(case=config_cases({
    "seeds": field_values(), "level": field_values(), "demo": field_values(),
    "resume": field_values(), "demo_config": field_values(),
}))
def test_experiment_replicate_configs(tmp_path_factory, case):
    """Replication over tiny demos (the valid cases run one demo per seed)."""
    base_case = not case.in_file and not case.overrides
    folder = tmp_path_factory.mktemp("replicate")
    demo = folder / "demo.yaml"
    tiny: dict = {}
    for key, value in _TINY_EXPERIMENT.items():
        set_dotted(tiny, key, value)
    demo.write_text(yaml.safe_dump(tiny))
    case.in_file = {"demo_config": str(demo), "progress": False, **case.in_file}
    if "seeds" not in case.in_file and not any(o.startswith("seeds=") for o in case.overrides):
        case.in_file["seeds"] = [0]
    out = folder / "run"
    _clean(base_case, ["experiment", "replicate",
                       *case.argv(folder, ["--output-dir", str(out)])], out)


_CELL = st.one_of(st.none(), st.integers(-2, 99), st.sampled_from(["", "A", "B", "Refused"]),
                  st.floats(allow_nan=True, allow_infinity=True, width=32))


@CLI_SETTINGS
@given(rows=st.lists(st.fixed_dictionaries({"party": _CELL, "Q1": _CELL, "Q2": _CELL,
                                            "wt": _CELL}), max_size=12),
       extra=st.lists(st.sampled_from(["weight_column=wt", "questions=[Q1]", "type_column=Q2",
                                       "skip_incomplete=true", "type_missing_codes=[99]"]),
                      max_size=2, unique=True))
def test_nbc_on_any_wide_file(tmp_path_factory, rows, extra):
    """nbc on generated wide survey files (one row per respondent, one column per question):
    any cells, missing codes, weights and column roles end in a result or one clean line."""
    folder = tmp_path_factory.mktemp("wide")
    path = folder / "wide.csv"
    pd.DataFrame(rows, columns=["party", "Q1", "Q2", "wt"]).to_csv(path, index=False)
    argv = ["nbc", f"table={path}", *(["type_column=party"] if not any(
        e.startswith("type_column") for e in extra) else []), *extra]
    assert_clean([*argv, "--output-dir", str(folder / "run")], folder / "run")
