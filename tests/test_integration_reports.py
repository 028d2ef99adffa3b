"""`pluralign experiment composition`: the [COMPOSITION] composition matrix from the command
line."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pluralign.cli import main
from pluralign.data.splits import attribute_values, train_test_split_pairs
from pluralign.data.synthetic import PopulationConfig, load_population, make_population


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved synthetic population and a tiny GPT-NeoX + tokenizer saved as the 'SFT' model."""
    from pluralign.training import build_tokenizer, tiny_gpt_neox

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("composition")
    pop = make_population(PopulationConfig(n_annotators=40, pairs_per_annotator=10,
                                           text_style="compact", seed=3))
    pop.save(root / "population")
    ds = pop.dataset
    tok = build_tokenizer([t for c in ("prompt", "chosen", "rejected") for t in ds[c]],
                          vocab_size=300)
    model = tiny_gpt_neox(len(tok), seed=0, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64)
    model.save_pretrained(root / "sft")
    tok.save_pretrained(root / "sft")
    return root


def _composition_args(root, out, *extra):
    return ["experiment", "composition", "attribute=attr.gender", f"model={root / 'sft'}",
            f"data={root / 'population'}", "data.test_size=0.2", "--output-dir", str(out),
            "n_boot=50", "max_length=48", "max_prompt_length=32",
            "training.learning_rate=3.0e-3", "training.use_cpu=true",
            "training.per_device_train_batch_size=16", *extra]


def test_evaluate_composition_writes_matrix_heatmaps_and_report(setup, tmp_path, capsys):
    out = tmp_path / "run"
    # the mix row (a model on all groups) is tested in test_evaluation_composition
    assert main(_composition_args(setup, out, "n_per_group=24", "mix=false")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    cells = pd.read_csv(out / "composition.csv")
    margin = pd.read_csv(out / "composition_margin.csv", index_col=0)

    # Groups and held-out counts come from the same split the command made (seed 0, 20%).
    pop = load_population(setup / "population").dataset
    test = train_test_split_pairs(pop, 0.2, seed=0)["test"]
    genders = attribute_values(test, "gender")
    groups = sorted(set(attribute_values(pop, "gender")))
    assert list(margin.index) == list(margin.columns) == groups
    assert metrics["composition"]["test_counts"] == {g: int((genders == g).sum())
                                                     for g in groups}
    assert metrics["composition"]["train_size"] == 24
    assert len(cells) == len(groups) ** 2
    assert np.all(np.isfinite(margin.to_numpy()))
    assert (cells["ci_low"] <= cells["margin"]).all()
    assert (cells["margin"] <= cells["ci_high"]).all()
    m = margin.to_numpy()
    off = ~np.eye(len(groups), dtype=bool)
    assert metrics["own_group_advantage"] == pytest.approx(np.diag(m).mean() - m[off].mean())

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert {"composition_margin.png", "composition_accuracy.png"} <= {p.name for p in
                                                                     out.iterdir()}
    assert f"{metrics['own_group_advantage']:+.4g}" in page
    assert f"{m[0, 0]:+.4g}" in page                  # the matrix itself is tabulated
    assert "Own-group advantage" in capsys.readouterr().out
    # the run folder's config.yaml is read back by --config as the same configuration
    from pluralign.config import build_config
    from pluralign.experiments.composition import CompositionConfig

    given = [a for a in _composition_args(setup, out, "n_per_group=24", "mix=false")[2:]
             if "=" in a]
    assert build_config(CompositionConfig, out / "config.yaml") == \
        build_config(CompositionConfig, overrides=given, output_dir=out)


def test_evaluate_composition_bad_input_gets_clear_errors(setup, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_composition_args(setup, out, f"model.ref_model={setup / 'sft'}")) == 2
    assert "ref_model" in capsys.readouterr().err
    assert main(_composition_args(setup, out, "training.lerning_rate=1")) == 2
    assert "lerning_rate" in capsys.readouterr().err
    assert main(_composition_args(setup, out, "n_per_group=100000")) == 2
    assert "n=100000" in capsys.readouterr().err
    assert main(_composition_args(setup, out, "data.test_size=0")) == 2
    assert "data.test_size=0 is invalid" in capsys.readouterr().err
    assert main(_composition_args(setup, out, "data.seed=3")) == 2
    assert "data.seed=3 differs from seed=0" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
