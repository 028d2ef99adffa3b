"""group_dpo / group_mixdpo through PreferenceTrainer: group column, logged weights, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pluralign.data import make_population
from pluralign.errors import ConfigError
from pluralign.objectives import GroupRobustObjective, build_objective
from pluralign.training import PreferenceConfig, PreferenceTrainer, build_tokenizer, tiny_gpt_neox
from pluralign.training.columns import prepare_columns

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def population():
    pop = make_population(n_annotators=12, pairs_per_annotator=4, n_prompts=10, n_types=2,
                          type_probs=[0.75, 0.25], demographic_signal=0.0, text_style="compact")
    tokenizer = build_tokenizer([t for c in ("prompt", "chosen", "rejected")
                                 for t in pop.dataset[c]], 300)
    return pop.dataset, tokenizer


def _trainer(out: Path, data, tokenizer, objective="group_dpo", **kw) -> PreferenceTrainer:
    args = PreferenceConfig(
        output_dir=str(out), objective=objective, group_by="type_id", group_step_size=0.5,
        learning_rate=1e-3, optim="adamw_torch", per_device_train_batch_size=8, max_steps=4,
        save_steps=2, logging_steps=1, seed=0, use_cpu=True, report_to="none", disable_tqdm=True,
        max_length=48, max_prompt_length=24, **kw)
    model = tiny_gpt_neox(len(tokenizer), seed=0, hidden_size=32, intermediate_size=64)
    return PreferenceTrainer(model, args=args, train_dataset=data, processing_class=tokenizer)


def test_group_dpo_logs_weights_every_step_and_resumes_them(tmp_path, population):
    data, tokenizer = population
    full = _trainer(tmp_path / "full", data, tokenizer)
    assert isinstance(full.objective, GroupRobustObjective)
    counts = torch.bincount(torch.tensor(data["type_id"])).double()
    torch.testing.assert_close(full.objective.group_fractions, counts / counts.sum())
    full.train()
    logged = [h for h in full.state.log_history if "loss" in h]
    assert len(logged) == 4
    assert all(h["group_weight/0"] + h["group_weight/1"] == pytest.approx(1) for h in logged)
    saved = load_file(str(tmp_path / "full" / "checkpoint-2" / "strength.safetensors"))
    assert saved["group_weights"].tolist() == pytest.approx(
        [logged[1]["group_weight/0"], logged[1]["group_weight/1"]])
    assert saved["group_weights"].tolist() != pytest.approx([0.5, 0.5])

    resumed = _trainer(tmp_path / "full", data, tokenizer)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    torch.testing.assert_close(resumed.objective.group_weights, full.objective.group_weights,
                               rtol=0, atol=1e-9)


def test_group_mixdpo_trains_the_strength_under_the_group_weights(tmp_path, population):
    data, tokenizer = population
    trainer = _trainer(tmp_path / "mix", data, tokenizer, objective="group_mixdpo",
                       strength="gamma", strength_learning_rate=1e-2, save_strategy="no")
    trainer.train()
    last = [h for h in trainer.state.log_history if "loss" in h][-1]
    assert last["strength/rate"] != pytest.approx(16.7, abs=1e-4)
    assert "group_weight/1" in last


def test_group_by_without_a_group_objective_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="group_by is read by group_dpo, group_mixdpo"):
        PreferenceConfig(output_dir=str(tmp_path), objective="dpo", group_by="attr.age")


def test_prepare_columns_maps_the_eval_split_through_the_training_name_table(population):
    data, _ = population
    objective = build_objective("group_dpo", group_by="type_id", group_init="proportional")
    minority_only = data.filter(lambda row: row["type_id"] == 1)
    train, evaluation = prepare_columns(objective, data, minority_only)
    assert objective.group_names == ["0", "1"]
    assert train["group"] == data["type_id"]
    assert set(evaluation["group"]) == {1}          # id 1 as in training, not a fresh id 0
    counts = torch.bincount(torch.tensor(data["type_id"])).double()
    torch.testing.assert_close(objective.group_fractions, counts / counts.sum())
    torch.testing.assert_close(objective.group_weights, counts / counts.sum())


def test_an_existing_group_column_sets_the_number_of_groups(population):
    data, _ = population
    objective = build_objective("group_mixdpo", strength="gamma")
    three = [i % 3 for i in range(len(data))]
    prepare_columns(objective, data.add_column("group", three), None)
    assert objective.num_groups == 3
    torch.testing.assert_close(objective.group_fractions,
                               torch.bincount(torch.tensor(three)).double() / len(data))
    with pytest.raises(ConfigError, match=r"group\(s\) \['1'\] have no training pairs"):
        prepare_columns(objective, data.add_column("group", [2 * t for t in data["type_id"]]),
                       None)


def test_prepare_columns_leaves_other_objectives_and_their_data_alone(population):
    data, _ = population
    objective = build_objective("dpo")
    train, evaluation = prepare_columns(objective, data, None)
    assert train is data and evaluation is None
