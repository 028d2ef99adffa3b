"""Panel MixDPO in training (issue 22 item 4): ``strength_unit: annotator``, the whole-annotator
batch sampler, and training a tiny model with it."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny_inputs import two_type_population_and_tokenizer

from pluralign.data.schema import SchemaError
from pluralign.errors import ConfigError
from pluralign.objectives import (
    ANNOTATOR_COLUMN,
    build_objective,
    dpo_loss,
    panel_mixdpo_loss,
)
from pluralign.strength import Gamma, LogNormal, PointMass
from pluralign.training import PreferenceConfig, PreferenceTrainer, tiny_gpt_neox
from pluralign.training.sampler import WholeGroupBatchSampler

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------- loss
def _mp_log_panel(margins: list[float], density) -> mp.mpf:
    """``log ∫ p(β) Π_j σ(β Δ_j) dβ`` by mpmath quadrature over ``v = log β`` (brute force)."""
    def integrand(v):
        beta = mp.exp(v)
        value = density(beta) * beta
        for d in margins:
            value *= 1 / (1 + mp.exp(-beta * d))
        return value
    return mp.log(mp.quad(integrand, [-40, -5, -2, 0, 2, 5, 10, 20]))


def _gamma_density(shape: float, rate: float):
    k, lam = mp.mpf(shape), mp.mpf(rate)
    return lambda b: mp.exp(k * mp.log(lam) - mp.loggamma(k) + (k - 1) * mp.log(b) - lam * b)


def _lognormal_density(mu: float, sigma: float):
    m, s = mp.mpf(mu), mp.mpf(sigma)
    return lambda b: mp.exp(-(mp.log(b) - m) ** 2 / (2 * s * s)) / (b * s * mp.sqrt(2 * mp.pi))


@pytest.mark.parametrize("strength, density", [
    (Gamma(shape=0.8, rate=0.5, learnable=False), _gamma_density(0.8, 0.5)),
    (LogNormal(mu=0.3, sigma=1.1, learnable=False), _lognormal_density(0.3, 1.1)),
])
def test_panel_loss_is_minus_the_annotator_log_likelihoods_over_the_pairs(strength, density):
    margins = [0.7, -1.3, 2.5, 0.05, -0.4, 3.0, 1.1]
    annotators = [7, 2, 7, 7, 2, 11, 7]  # any integer ids, any order
    loss = panel_mixdpo_loss(torch.tensor(margins, dtype=torch.float64), strength,
                             torch.tensor(annotators))
    with mp.workdps(30):
        pairs = list(zip(margins, annotators, strict=True))
        total = sum(_mp_log_panel([m for m, a in pairs if a == g], density)
                    for g in set(annotators))
    assert loss.shape == (len(margins),)
    assert float(loss.mean()) == pytest.approx(-float(total) / len(margins), rel=1e-9)
    # each pair carries its annotator's share: equal within an annotator
    assert float(loss[0]) == pytest.approx(float(loss[2]))


def test_panel_loss_with_a_point_mass_is_dpo():
    margin = torch.tensor([0.5, -2.0, 1.0, 3.0], dtype=torch.float64)
    panel = panel_mixdpo_loss(margin, PointMass(beta=0.3), torch.tensor([0, 0, 1, 1]))
    assert float(panel.mean()) == pytest.approx(float(dpo_loss(margin, 0.3).mean()), rel=1e-12)


def test_panel_loss_reaches_the_strength_parameters_and_the_margins():
    strength = Gamma(shape=2.0, rate=4.0, learnable=True)
    margin = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    panel_mixdpo_loss(margin, strength, torch.tensor([0, 0, 1])).mean().backward()
    grads = [p.grad for p in strength.parameters()] + [margin.grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) and bool((g != 0).any())
               for g in grads)


# ---------------------------------------------------------------------------------------- settings
def test_strength_unit_is_a_mixdpo_setting_and_declares_a_whole_annotator_column():
    objective = build_objective("mixdpo", strength="gamma", strength_unit="annotator",
                                annotator_by="annotator_id")
    (column,) = objective.columns()
    assert (column.name, column.ids, column.ids_from, column.whole) == (
        ANNOTATOR_COLUMN, True, "annotator_id", True)
    assert build_objective("mixdpo", strength="gamma").columns() == ()


@pytest.mark.parametrize("name, settings, words", [
    ("dpo", {"strength_unit": "annotator"}, "does not use strength_unit"),
    ("mixdpo", {"strength": "gamma", "annotator_by": "annotator_id"},
     "does not use annotator_by"),
    ("group_mixdpo", {"strength": "gamma", "strength_unit": "annotator"},
     "does not use strength_unit"),
    ("mixdpo", {"strength": "gamma", "strength_unit": "person"}, "strength_unit='person'"),
])
def test_groups_given_where_they_are_not_read_get_one_line(name, settings, words):
    with pytest.raises(ConfigError, match=words) as info:
        build_objective(name, **settings)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------- sampler
def _groups(seed: int = 0) -> np.ndarray:
    """Annotators with 1..23 pairs, pairs of one annotator scattered through the data."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(40) * 3 + 5, rng.integers(1, 24, size=40))
    return ids[rng.permutation(ids.size)]


@pytest.mark.parametrize("batch_size", [4, 8, 16])
def test_batches_hold_whole_annotators_or_chunks_and_cover_every_pair_once(batch_size):
    ids = _groups()
    sampler = WholeGroupBatchSampler(ids, batch_size, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    flat = np.concatenate(batches)
    assert np.array_equal(np.sort(flat), np.arange(ids.size))  # every pair exactly once
    sizes = {g: int((ids == g).sum()) for g in np.unique(ids)}
    for batch in batches:
        assert 0 < len(batch) <= batch_size
        for g in np.unique(ids[batch]):
            held = int((ids[batch] == g).sum())
            if sizes[g] <= batch_size:  # a small annotator is whole in its batch
                assert held == sizes[g]
            else:  # a large one is split into near-equal chunks, one per batch
                parts = math.ceil(sizes[g] / batch_size)
                assert held in (sizes[g] // parts, -(-sizes[g] // parts))


def test_batches_are_deterministic_per_seed_and_epoch_and_the_length_is_fixed():
    ids = _groups()

    def epoch(seed, e):
        sampler = WholeGroupBatchSampler(ids, 8, seed=seed)
        sampler.set_epoch(e)
        return [tuple(b) for b in sampler]

    assert epoch(1, 0) == epoch(1, 0)
    assert epoch(1, 0) != epoch(2, 0)
    assert epoch(1, 0) != epoch(1, 1)
    assert len({len(epoch(1, e)) for e in range(5)}) == 1


@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_disjoint_whole_and_equally_long_across_ranks(world):
    ids = _groups(1)
    shards = []
    for rank in range(world):
        sampler = WholeGroupBatchSampler(ids, 8, num_processes=world, rank=rank, seed=5)
        sampler.set_epoch(2)
        shards.append([b for b in sampler])
        assert len(shards[-1]) == len(sampler)
    assert len({len(s) for s in shards}) == 1
    owner = {}
    for rank, shard in enumerate(shards):
        for batch in shard:
            for i in batch:
                assert i not in owner
                owner[i] = rank
    assert sorted(owner) == list(range(ids.size))
    # no chunk crosses processes: every annotator of at most a batch lives on one rank
    for g in np.unique(ids):
        members = np.flatnonzero(ids == g)
        if members.size <= 8:
            assert len({owner[i] for i in members}) == 1


def test_evaluation_batches_keep_the_order_of_first_appearance():
    sampler = WholeGroupBatchSampler([4, 4, 9, 2, 9, 2, 2], 3, shuffle=False)
    assert sorted(map(sorted, sampler)) == [[0, 1], [2, 4], [3, 5, 6]]


def test_too_few_pairs_for_the_processes_get_one_line():
    with pytest.raises(ConfigError, match="cannot be"):
        WholeGroupBatchSampler([0], 4, num_processes=2, rank=0)


# ---------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def population():
    return two_type_population_and_tokenizer(5)


def _args(tmp_path, **kw) -> PreferenceConfig:
    base = dict(output_dir=str(tmp_path), learning_rate=1e-3, optim="adamw_torch",
                per_device_train_batch_size=8, max_steps=4, save_strategy="no", logging_steps=1,
                seed=0, use_cpu=True, report_to="none", disable_tqdm=True, max_length=48,
                max_prompt_length=24, objective="mixdpo", strength="gamma",
                strength_unit="annotator", strength_learning_rate=0.05)
    return PreferenceConfig(**{**base, **kw})


def _model(tokenizer):
    return tiny_gpt_neox(len(tokenizer), seed=0, hidden_size=32, intermediate_size=64)


@pytest.mark.parametrize("packing", [True, False])
def test_training_with_whole_annotator_batches_moves_the_strength(tmp_path, population, packing):
    data, tokenizer = population
    seen: list[list[int]] = []
    trainer = PreferenceTrainer(
        _model(tokenizer), args=_args(tmp_path, precompute_ref_log_probs=True,
                                      share_prompt=packing, padding_free=packing),
        train_dataset=data, eval_dataset=data, processing_class=tokenizer)
    forward = trainer.objective.forward

    def spy(margin, batch=None):
        seen.append(torch.as_tensor(batch[ANNOTATOR_COLUMN]).long().tolist())
        return forward(margin, batch)

    trainer.objective.forward = spy
    start = dict(trainer.objective.strength.params())
    trainer.train()
    assert trainer.objective.strength.params() != start
    names = np.asarray(data["annotator_id"])
    for batch in seen[:4]:  # 5 pairs per annotator, 8 per batch: one whole annotator a batch
        assert len(set(batch)) == 1 and len(batch) == 5
    assert {len(set(names[np.asarray(trainer.train_dataset[ANNOTATOR_COLUMN]) == g]))
            for g in range(6)} == {1}
    assert math.isfinite(trainer.evaluate()["eval_loss"])


def test_resume_continues_the_same_batches_and_strength(tmp_path, population):
    data, tokenizer = population
    full = PreferenceTrainer(_model(tokenizer), args=_args(tmp_path / "full"),
                             train_dataset=data, processing_class=tokenizer)
    full.train()
    first = PreferenceTrainer(_model(tokenizer),
                              args=_args(tmp_path / "cut", save_strategy="steps", save_steps=2),
                              train_dataset=data, processing_class=tokenizer)
    first.train()
    resumed = PreferenceTrainer(_model(tokenizer), args=_args(tmp_path / "cut"),
                                train_dataset=data, processing_class=tokenizer)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-2"))
    saved = load_file(str(tmp_path / "cut" / "checkpoint-2" / "strength.safetensors"))
    assert saved  # the strength was checkpointed with the policy
    for a, b in zip(full.objective.parameters(), resumed.objective.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_lora_and_bf16_train_with_whole_annotator_batches(tmp_path, population):
    peft = pytest.importorskip("peft")
    data, tokenizer = population
    policy = peft.get_peft_model(_model(tokenizer), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query_key_value"], task_type="CAUSAL_LM"))
    trainer = PreferenceTrainer(policy, args=_args(tmp_path, bf16=True, max_steps=2),
                                train_dataset=data, processing_class=tokenizer)
    trainer.train()
    assert all(math.isfinite(v) for v in trainer.objective.strength.params().values())


def test_a_missing_annotator_column_gets_one_line(tmp_path, population):
    data, tokenizer = population
    with pytest.raises((SchemaError, ConfigError), match="annotator_id") as info:
        PreferenceTrainer(_model(tokenizer), args=_args(tmp_path),
                          train_dataset=data.remove_columns("annotator_id"),
                          processing_class=tokenizer)
    assert "\n" not in str(info.value)


def test_the_panel_objective_without_annotators_in_the_batch_gets_one_line():
    objective = build_objective("mixdpo", strength="gamma", strength_unit="annotator")
    with pytest.raises(ConfigError, match=ANNOTATOR_COLUMN):
        objective(torch.zeros(3), {})


def test_replicate_refuses_a_compared_method_the_demo_does_not_train(monkeypatch):
    from pathlib import Path

    from pluralign.experiments.replicate import ReplicateConfig

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    with pytest.raises(ConfigError, match="MixDPO-Gamma-panel") as info:
        ReplicateConfig(methods=["MixDPO-Gamma", "MixDPO-Gamma-panel"])
    assert "\n" not in str(info.value)
    assert ReplicateConfig(
        demo=["methods={MixDPO-Gamma: {objective: mixdpo, strength: gamma}, MixDPO-Gamma-panel: "
              "{objective: mixdpo, strength: gamma, strength_unit: annotator}}"],
        methods=["MixDPO-Gamma", "MixDPO-Gamma-panel"]).methods[1] == "MixDPO-Gamma-panel"
