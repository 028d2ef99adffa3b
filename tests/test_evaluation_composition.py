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


def _own_group_fns(trained=None):
    def train_fn(subset):
        if trained is not None:
            trained.append(subset)
        return set(attribute_values(subset, "gender"))

    def score_fn(model_groups, pairs):  # +1 on the model's own group(s), -1 elsewhere
        return np.where(np.isin(attribute_values(pairs, "gender"), list(model_groups)), 1.0, -1.0)

    return train_fn, score_fn


def test_the_mix_row_and_the_advantage_in_percentage_points():
    sp = _splits()
    trained = []
    res = composition_matrix(sp["train"], sp["test"], "gender", *_own_group_fns(trained),
                             n_boot=20, mix=True)
    groups = list(res.margin.columns)
    assert list(res.margin.index) == [*groups, "mix"]
    mixed = trained[-1]
    assert len(mixed) == res.train_size and set(attribute_values(mixed, "gender")) <= set(groups)
    # every group's pairs are in the mix here, so the mix model scores +1 everywhere
    assert (res.margin.loc["mix"] == 1.0).all()
    # square part only: diagonal 100%, off-diagonal 0% -> +100 pp
    assert res.own_group_advantage("accuracy") == pytest.approx(100.0)
    assert len(res.to_frame()) == (len(groups) + 1) * len(groups)


def test_cell_intervals_resample_annotators_when_asked():
    sp = _splits()
    noisy = np.random.default_rng(0).normal(size=len(sp["test"]))
    by_row = {i: v for i, v in enumerate(noisy)}

    def score_fn(model, pairs):
        return np.asarray([by_row[i] for i in pairs["row"]])

    test = sp["test"].add_column("row", list(range(len(sp["test"]))))
    kw = {"n_boot": 200, "groups": None}
    pairs = composition_matrix(sp["train"], test, "gender", lambda s: None, score_fn, **kw)
    clustered = composition_matrix(sp["train"], test, "gender", lambda s: None, score_fn,
                                   cluster="annotator_id", **kw)
    assert np.allclose(pairs.margin, clustered.margin)
    assert not np.allclose(pairs.margin_ci_low, clustered.margin_ci_low)
    with pytest.raises(EvaluationError, match="cluster column 'nope'"):
        composition_matrix(sp["train"], test, "gender", lambda s: None, score_fn,
                           cluster="nope", **kw)


def test_a_missing_attribute_and_a_group_without_held_out_pairs_are_one_line_errors():
    from pluralign.data.schema import decode_mapping, encode_mapping

    sp = _splits()
    first = sp["train"][0]["annotator_id"]

    def drop_gender(row):
        attrs = decode_mapping(row["attributes"])
        if row["annotator_id"] == first:
            attrs.pop("gender", None)
        return {"attributes": encode_mapping(attrs)}

    partial = sp["train"].map(drop_gender)
    with pytest.raises(EvaluationError, match=r"training pairs have no 'gender' \(first at row "
                                              r"\d+\); give every annotator a value"):
        composition_matrix(partial, sp["test"], "gender", *_own_group_fns(), n_boot=10)
    groups = sorted(set(attribute_values(sp["train"], "gender")))
    test = sp["test"].filter(lambda r: decode_mapping(r["attributes"])["gender"] != groups[0])
    with pytest.raises(EvaluationError, match=rf"no held-out pairs for gender=\['{groups[0]}'\]"):
        composition_matrix(sp["train"], test, "gender", *_own_group_fns(), n_boot=10)


def test_the_summary_over_seeds_is_scipys_t_interval_of_the_advantage(tmp_path):
    from scipy import stats

    from pluralign.experiments.composition import CompositionConfig, seed_summary

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    from pluralign.data.config import DataConfig
    from pluralign.training.recipe import ModelConfig

    cfg = CompositionConfig(model=ModelConfig(name_or_path=str(tmp_path / "m")),
                            data=DataConfig(source="synthetic", test_size=0.3),
                            attribute="attr.gender", seeds=[0, 1, 2])
    pp, margin = [3.0, 1.0, 5.5], [0.4, 0.1, 0.9]
    matrix = {"a": {"a": 60.0, "b": 50.0}, "b": {"a": 52.0, "b": 58.0}}
    done = {s: {"own_group_advantage_pp": pp[s], "own_group_advantage": margin[s],
                "composition": {"attribute": "gender", "accuracy": matrix, "margin": matrix}}
            for s in range(3)}
    metrics = seed_summary(cfg, done)
    low, high = stats.ttest_1samp(pp, 0.0).confidence_interval(0.95)
    got = metrics["own_group_advantage_pp"]
    assert (got["mean"], got["ci_low"], got["ci_high"]) == pytest.approx((sum(pp) / 3, low, high))
    assert metrics["accuracy_mean"]["a"]["b"] == 50.0
    with pytest.raises(Exception, match=r"seeds=\[1, 1\] repeats a seed"):
        CompositionConfig(model=cfg.model, data=cfg.data, attribute="gender", seeds=[1, 1])


def test_a_group_without_training_pairs_names_the_values_present():
    sp = _splits()
    with pytest.raises(Exception, match=r"no pairs with gender=\['X'\]; values present: \["):
        composition_matrix(sp["train"], sp["test"], "gender", *_own_group_fns(), n_boot=10,
                           groups=["X", *sorted(set(attribute_values(sp["train"], "gender")))])
