"""Composition matrix ([COMPOSITION]): train per group on size-matched subsets, evaluate on all."""

import numpy as np
import pytest
import torch

from pluralign.data.splits import attribute_values, train_test_split_pairs
from pluralign.data.synthetic import PopulationConfig, make_population
from pluralign.evaluation.composition import composition_matrix
from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.plots import plot_composition
from pluralign.experiments.composition import tiny_dpo_functions


def _splits(**kw):
    pop = make_population(PopulationConfig(n_annotators=40, pairs_per_annotator=10,
                                           text_style="compact", seed=3, **kw))
    return train_test_split_pairs(pop.dataset, 0.3, seed=0)


def test_matrix_structure_with_a_known_answer():
    sp = _splits()
    seen = []

    def train_fn(subset):
        seen.append(len(subset))
        return set(attribute_values(subset, "gender"))

    def score_fn(model_groups, pairs):  # +1 on the model's own group, -1 elsewhere
        g = attribute_values(pairs, "gender")
        return np.where(np.isin(g, list(model_groups)), 1.0, -1.0)

    res = composition_matrix(sp["train"], sp["test"], "gender", train_fn, score_fn, n_boot=50)
    counts = {g: int((attribute_values(sp["train"], "gender") == g).sum())
              for g in res.margin.index}
    assert seen == [min(counts.values())] * len(counts) == [res.train_size] * len(counts)
    assert np.allclose(np.diag(res.margin), 1.0)
    assert np.allclose(res.margin.to_numpy()[~np.eye(len(counts), dtype=bool)], -1.0)
    assert np.allclose(np.diag(res.accuracy), 100.0)
    assert res.to_dict()["attribute"] == "gender"
    assert res.own_group_advantage() == pytest.approx(2.0)     # diagonal +1, off-diagonal -1
    cells = res.to_frame()
    assert len(cells) == len(counts) ** 2
    own = cells["trained_on"] == cells["evaluated_on"]
    assert (cells.loc[own, "margin"] == 1.0).all() and (cells.loc[~own, "margin"] == -1.0).all()
    assert "+2" in res.summary()[1]
    with pytest.raises(EvaluationError, match="score_fn"):
        composition_matrix(sp["train"], sp["test"], "gender", train_fn,
                           lambda m, p: np.full(len(p), np.nan), n_boot=10)


@pytest.mark.slow
def test_tiny_dpo_composition_runs_end_to_end(tmp_path):
    from pluralign.training import (
        PreferenceConfig,
        SFTConfig,
        build_tokenizer,
        run_sft,
        tiny_gpt_neox,
    )

    torch.set_num_threads(1)
    sp = _splits()
    texts = [t for c in ("prompt", "chosen", "rejected") for t in sp["train"][c]]
    tok = build_tokenizer(texts, vocab_size=300)
    common = {"report_to": [], "save_strategy": "no", "use_cpu": True, "disable_tqdm": True,
              "max_length": 48, "max_prompt_length": 32}
    sft = tiny_gpt_neox(len(tok), seed=0, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)
    run_sft(sft, tok, sp["train"], SFTConfig(output_dir=str(tmp_path / "sft"), learning_rate=3e-3,
                                             per_device_train_batch_size=16, **common))
    cfg = PreferenceConfig(output_dir=str(tmp_path / "dpo"), learning_rate=3e-4,
                           per_device_train_batch_size=16, **common)
    train_fn, score_fn = tiny_dpo_functions(sft.eval(), tok, cfg)
    res = composition_matrix(sp["train"], sp["test"], "gender", train_fn, score_fn, n=24,
                             n_boot=50)
    assert res.margin.shape == (2, 2) and np.all(np.isfinite(res.margin.to_numpy()))
    assert (res.margin_ci_low.to_numpy() <= res.margin.to_numpy()).all()
    assert plot_composition(res.margin, tmp_path / "comp.png").is_file()
