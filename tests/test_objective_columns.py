"""The trainer asks the objective: declared columns, derived ids, one build per run."""

from __future__ import annotations

import pytest
import torch
from tiny_inputs import two_type_population_and_tokenizer

from pluralign.data.schema import SchemaError
from pluralign.errors import ConfigError
from pluralign.objectives import Column, DPOObjective, ObjectiveSpec
from pluralign.training import PreferenceConfig, PreferenceTrainer, tiny_gpt_neox

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def population():
    return two_type_population_and_tokenizer(4)


class _Declaring(DPOObjective):
    """DPO that declares an id column derived from ``annotator_id`` and a value column, and
    records what the trainer tells it and what reaches ``forward``. Registered nowhere and known
    to no trainer branch: the declaration alone must make it work."""

    def __init__(self) -> None:
        super().__init__(0.1)
        self.heard: list[tuple] = []
        self.seen: list[dict[str, list[float]]] = []

    def columns(self) -> tuple[Column, ...]:
        return (Column("speaker", ids=True, ids_from="annotator_id"), Column("type_id"))

    def set_ids(self, column, counts, names) -> None:
        self.heard.append((column, list(counts), list(names)))

    def forward(self, margin, batch=None):
        self.seen.append({k: torch.as_tensor(batch[k]).tolist() for k in ("speaker", "type_id")})
        return super().forward(margin, batch)


def _args(tmp_path, **kw) -> PreferenceConfig:
    return PreferenceConfig(
        output_dir=str(tmp_path), learning_rate=1e-3, optim="adamw_torch",
        per_device_train_batch_size=24, max_steps=1, save_strategy="no", logging_steps=1,
        seed=0, use_cpu=True, report_to="none", disable_tqdm=True, max_length=48,
        max_prompt_length=24, **kw)


def _model(tokenizer):
    return tiny_gpt_neox(len(tokenizer), seed=0, hidden_size=32, intermediate_size=64)


def test_an_objective_declaring_columns_gets_them_with_no_trainer_branch(tmp_path, population):
    data, tokenizer = population
    objective = _Declaring()
    evaluation = data.filter(lambda row: row["annotator_id"] == data[0]["annotator_id"])
    trainer = PreferenceTrainer(_model(tokenizer), args=_args(tmp_path), train_dataset=data,
                                eval_dataset=evaluation, processing_class=tokenizer,
                                objective=objective)
    names = sorted(set(data["annotator_id"]))
    assert objective.heard == [("speaker", [data["annotator_id"].count(n) for n in names],
                                names)]
    speaker = {a: names.index(a) for a in names}
    assert trainer.train_dataset["speaker"] == [speaker[a] for a in data["annotator_id"]]
    assert set(trainer.eval_dataset["speaker"]) == {speaker[data[0]["annotator_id"]]}
    trainer.train()
    (batch,) = objective.seen
    assert sorted(batch["speaker"]) == sorted(map(float, trainer.train_dataset["speaker"]))
    assert sorted(batch["type_id"]) == sorted(map(float, data["type_id"]))


def test_a_declared_column_the_data_lack_is_named_before_any_model_work(tmp_path, population):
    data, tokenizer = population
    with pytest.raises(SchemaError, match="missing column.*pair_variance"):
        PreferenceTrainer(_model(tokenizer), args=_args(tmp_path, objective="corrected_dpo"),
                          train_dataset=data, processing_class=tokenizer)


def test_the_config_checks_the_objective_and_the_trainer_builds_it_once(tmp_path, population,
                                                                        monkeypatch):
    data, tokenizer = population
    built = []
    build = ObjectiveSpec.build
    monkeypatch.setattr(ObjectiveSpec, "build", lambda spec: built.append(spec) or build(spec))
    args = _args(tmp_path, objective="group_mixdpo", strength="gamma", group_by="type_id")
    assert built == []
    with pytest.raises(ConfigError, match="strength_shape"):
        _args(tmp_path, objective="mixdpo", strength="gamma", strength_shape=-1.0)
    assert built == []
    trainer = PreferenceTrainer(_model(tokenizer), args=args, train_dataset=data,
                                processing_class=tokenizer)
    assert [spec.name for spec in built] == ["group_mixdpo"]
    assert trainer.objective.num_groups == 2
