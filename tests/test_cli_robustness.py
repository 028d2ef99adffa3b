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
from hypothesis import given
from hypothesis import strategies as st
from test_training_cli import TINY

from pluralign.data.synthetic import PopulationConfig, make_population

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
    from pluralign.training.models import build_tokenizer, tiny_gpt_neox

    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    pd.DataFrame([{"question": f"Q{q}", "type": t, "answer": rng.choice(["A", "B", "C"]),
                   "weight": 1.0} for q in range(2) for t in ("Dem", "Rep") for _ in range(12)]
                 ).to_csv(root / "survey.csv", index=False)
    pd.DataFrame({"margin": rng.normal(0.5, 1.0, 60), "attr.age": rng.choice(["a", "b"], 60),
                  "annotator_id": rng.choice(list("uvwxyz"), 60)}
                 ).to_csv(root / "margins.csv", index=False)
    population = make_population(PopulationConfig(n_annotators=6, pairs_per_annotator=3,
                                                  n_prompts=5, text_style="compact", seed=0))
    population.save(root / "pop")
    texts = list(population.dataset["prompt"]) + list(population.dataset["chosen"])
    tokenizer = build_tokenizer(texts, vocab_size=300)
    tiny_gpt_neox(len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
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
