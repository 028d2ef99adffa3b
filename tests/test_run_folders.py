"""Every run folder's config.yaml is readable back by ``--config`` (issue 21): rerunning a command
from the config.yaml it wrote reproduces the run. The training experiments check it in their
own end-to-end tests (demo, group_robust, replicate, composition); report writes no config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pluralign.cli import main
from pluralign.config import build_config, config_values
from pluralign.data.synthetic import PopulationConfig, make_population
from pluralign.runs import write_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _rerun(command: list[str], first: Path, second: Path, *extra: str) -> None:
    """Run ``command`` into ``first``, then again from ``first/config.yaml`` into ``second``."""
    assert main([*command, *extra, "--output-dir", str(first)]) == 0
    assert main([*command, "--config", str(first / "config.yaml"),
                 "--output-dir", str(second)]) == 0


def _metrics(folder: Path, drop: tuple[str, ...] = ()) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return {k: v for k, v in metrics.items() if k not in drop}


def test_diagnose_reruns_from_its_config_yaml(tmp_path):
    rng = np.random.default_rng(0)
    beta = rng.gamma(2.0, 0.5, 400)
    margin = rng.normal(0, 2, 400)
    pd.DataFrame({"margin": np.where(rng.random(400) < 1 / (1 + np.exp(-beta * margin)),
                                     margin, -margin),
                  "attr.age": rng.choice(["a", "b"], 400)}).to_csv(tmp_path / "m.csv",
                                                                   index=False)
    _rerun(["diagnose"], tmp_path / "a", tmp_path / "b", f"margins={tmp_path / 'm.csv'}",
           "by=[attr.age]", "n_boot=5", "power_pairs=200", "power_sims=3")
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


def test_nbc_reruns_from_its_config_yaml(tmp_path):
    rng = np.random.default_rng(0)
    pd.DataFrame([{"question": f"Q{q}", "type": t, "answer": rng.choice(["A", "B", "C"])}
                  for q in range(2) for t in ("Dem", "Rep") for _ in range(10)]
                 ).to_csv(tmp_path / "survey.csv", index=False)
    _rerun(["nbc"], tmp_path / "a", tmp_path / "b", f"table={tmp_path / 'survey.csv'}")
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")


def test_simulate_reruns_from_its_config_yaml(tmp_path):
    _rerun(["experiment", "dahp"], tmp_path / "a", tmp_path / "b",
           "environment.num_states=12", "environment.num_actions=12",
           "experiment.num_pairs=2000", "experiment.methods=[dpo]")
    drop = ("timings_s", "summary", "tables")  # wall-clock seconds differ
    assert _metrics(tmp_path / "a", drop) == _metrics(tmp_path / "b", drop)


def test_evaluate_reruns_from_its_config_yaml_and_scores_only_the_held_out_split(tmp_path):
    from pluralign.training import build_tokenizer, tiny_gpt_neox

    pop = make_population(PopulationConfig(n_annotators=6, pairs_per_annotator=5, n_prompts=6,
                                           text_style="compact", seed=0))
    pop.save(tmp_path / "pop")
    tok = build_tokenizer(list(pop.dataset["prompt"]) + list(pop.dataset["chosen"]),
                          vocab_size=300)
    for name, seed in (("policy", 1), ("sft", 2)):
        tiny_gpt_neox(len(tok), seed=seed, hidden_size=16, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=32).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    _rerun(["evaluate"], tmp_path / "a", tmp_path / "b", f"model={tmp_path / 'policy'}",
           f"model.ref_model={tmp_path / 'sft'}", f"data={tmp_path / 'pop'}",
           "data.test_size=0.4", "data.seed=3", "by=[attr.gender]", "n_boot=20")
    first, second = (pd.read_csv(tmp_path / r / "margins.csv") for r in "ab")
    pd.testing.assert_frame_equal(first, second)
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    from pluralign.data.splits import train_test_split_pairs

    held_out = train_test_split_pairs(pop.dataset, 0.4, seed=3)["test"]
    assert first["item_id"].tolist() == list(held_out["item_id"])  # the held-out split only


def test_pal_benchmark_config_yaml_reads_back(tmp_path):
    """What ``pluralign experiment pal_benchmark`` writes as config.yaml (its config, through
    :func:`~pluralign.runs.write_config`) builds the same config."""
    from pluralign.experiments.pal_benchmark import BenchmarkConfig

    config = build_config(BenchmarkConfig, Path(__file__).resolve().parents[1] / "configs"
                          / "pal_benchmark.yaml", ["seed=4"], output_dir=tmp_path)
    write_config(tmp_path, config)
    assert build_config(BenchmarkConfig, tmp_path / "config.yaml") == config


def test_config_values_of_an_experiment_are_plain_yaml_that_reads_back():
    from pluralign.experiments.demo import DemoConfig

    cfg = build_config(DemoConfig, overrides=["seed=2", "training.logging_steps=3",
                                              "model.lora={r: 4}", "sft=null"])
    text = yaml.safe_dump(config_values(cfg))
    again = build_config(DemoConfig, overrides=[f"{k}={json.dumps(v)}" for k, v in
                                                yaml.safe_load(text).items()])
    assert again == cfg and config_values(again) == config_values(cfg)
