"""Training: tokenisation, collator, log-probs, config checks, equality with TRL's DPO loss."""

from __future__ import annotations

import copy

import datasets
import pytest
import torch

from pluralign.data import SchemaError
from pluralign.errors import ConfigError
from pluralign.training import (
    PreferenceCollator,
    PreferenceConfig,
    PreferenceTrainer,
    build_tokenizer,
    sequence_logps,
    tiny_gpt_neox,
    tokenize_pair,
)
from pluralign.training.logps import _generic_logps
from pluralign.training.trainer import longest_first_batches

PAIRS = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green and purple."},
    {"prompt": "Water boils at", "chosen": " one hundred degrees.", "rejected": " ten."},
    {"prompt": "Cats like", "chosen": " fish.", "rejected": " taxes and spreadsheets."},
    {"prompt": "Two plus two is", "chosen": " four.", "rejected": " five."},
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    texts = [p["prompt"] + p["chosen"] + p["rejected"] for p in PAIRS]
    return build_tokenizer(texts, vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return tiny_gpt_neox(len(tokenizer), seed=1)


def _config(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True,
                per_device_train_batch_size=4, save_strategy="no")
    return PreferenceConfig(**{**base, **kw})


def _brute_force_logps(model, batch):
    """Independent reference: full-vocabulary log_softmax over every position, masked sum."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logp = torch.log_softmax(logits.double(), dim=-1)[:, :-1]
    tok = logp.gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (tok * batch["completion_mask"][:, 1:]).sum(dim=1)


# ------------------------------------------------------------------ tokenisation and collation
def test_tokenize_pair_splits_prompt_and_completion_and_appends_eos(tokenizer):
    out = tokenize_pair(PAIRS[0], tokenizer)
    eos = tokenizer.eos_token_id
    assert tokenizer.decode(out["prompt_ids"]) == "The sky is"
    assert out["chosen_ids"][-1] == eos and out["rejected_ids"][-1] == eos
    assert tokenizer.decode(out["chosen_ids"][:-1]) == " blue."
    assert tokenizer.decode(out["rejected_ids"][:-1]) == " green and purple."


def test_truncation_keeps_prompt_end_and_completion_start(tokenizer):
    long = {"prompt": "word " * 50 + "END", "chosen": " a b c d e f g h", "rejected": " x"}
    out = tokenize_pair(long, tokenizer, max_length=20, max_prompt_length=8)
    full_prompt = tokenizer(long["prompt"], add_special_tokens=False)["input_ids"]
    assert out["prompt_ids"] == full_prompt[-8:]
    assert len(out["prompt_ids"]) + len(out["chosen_ids"]) == 20
    full_chosen = tokenize_pair(long, tokenizer, 10_000, 10_000)["chosen_ids"]
    assert out["chosen_ids"] == full_chosen[:12]


def test_chat_messages_use_the_chat_template(tokenizer):
    example = {"prompt": [{"role": "user", "content": "Is the sky blue?"}],
               "chosen": [{"role": "assistant", "content": "Yes."}],
               "rejected": [{"role": "assistant", "content": "No."}]}
    out = tokenize_pair(example, tokenizer)
    assert tokenizer.decode(out["prompt_ids"]) == "user: Is the sky blue?\nassistant:"
    assert tokenizer.decode(out["chosen_ids"]).strip() == "Yes."


def test_chat_messages_without_template_fail_with_a_fix(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(ConfigError, match="chat template"):
        tokenize_pair({"prompt": [{"role": "user", "content": "hi"}],
                       "chosen": [{"role": "assistant", "content": "a"}],
                       "rejected": [{"role": "assistant", "content": "b"}]}, plain)


def test_collator_stacks_chosen_then_rejected_and_keeps_numeric_columns():
    examples = [{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5],
                 "pair_variance": 0.5},
                {"prompt_ids": [6], "chosen_ids": [7, 8, 9], "rejected_ids": [10],
                 "pair_variance": 1.5}]
    batch = PreferenceCollator(pad_token_id=0)(examples)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [6, 7, 8, 9], [1, 2, 4, 5], [6, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1],
                                                [1, 1, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1],
                                                 [0, 1, 0, 0]]
    assert batch["pair_variance"].tolist() == [0.5, 1.5]


# ------------------------------------------------------------------ log-probs
def test_sequence_logps_matches_full_log_softmax(model, tokenizer):
    batch = PreferenceCollator(tokenizer.pad_token_id)([tokenize_pair(p, tokenizer) for p in PAIRS])
    expected = _brute_force_logps(model, batch)
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    torch.testing.assert_close(sequence_logps(model, *args).double(), expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(_generic_logps(model, *args).double(), expected, rtol=0, atol=1e-4)


def test_sequence_logps_chunked_head_is_exact_and_differentiable(model, tokenizer, monkeypatch):
    import pluralign.training.logps as logps_module

    batch = PreferenceCollator(tokenizer.pad_token_id)([tokenize_pair(p, tokenizer) for p in PAIRS])
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    whole = sequence_logps(model, *args)
    monkeypatch.setattr(logps_module, "CHUNK_ELEMENTS", len(tokenizer) * 3)  # 3 tokens per chunk
    chunked = sequence_logps(model, *args)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    chunked.sum().backward()
    assert model.get_output_embeddings().weight.grad is not None
    model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------ config errors
@pytest.mark.parametrize("kwargs, message", [
    ({"objective": "ppo"}, "objective='ppo' is unknown"),
    ({"learning_rate": -1e-5}, "learning_rate=-1e-05 is invalid; use a finite number >= 0"),
    ({"strength_learning_rate": -1.0}, "strength_learning_rate=-1.0 is invalid"),
    # issue 15 #10: inf passed validation and failed mid-training; a string gave "'>=' not
    # supported"
    ({"learning_rate": float("inf")}, "learning_rate=inf is invalid; use a finite number"),
    ({"strength_learning_rate": float("inf")}, "strength_learning_rate=inf is invalid"),
    ({"learning_rate": "abc"}, "learning_rate='abc' is invalid; use a finite number >= 0"),
    ({"beta": float("inf")}, "beta=inf is"),
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size=0 is invalid; use an "
     "integer >= 1"),
    ({"objective": "mixdpo", "strength": "gamma", "strength_rate": 0.0},
     "strength_rate=0.0 is invalid; use a finite number > 0"),
    ({"objective": "mixdpo", "strength": "lognormal", "strength_sigma": -0.6},
     "strength_sigma=-0.6 is invalid"),
    ({"beta": 0.0}, "beta=0.0 is invalid"),
    ({"strength": "gamma"}, "objective 'dpo' does not use strength"),
    ({"objective": "mixdpo", "strength": "gamma", "strength_mu": -2.3},
     "does not use strength_mu"),
    ({"objective": "mixdpo", "strength": "cauchy"}, "strength='cauchy' is unknown"),
    ({"max_prompt_length": 128}, "max_prompt_length=128 must be in"),
])
def test_bad_configs_fail_before_training(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, **kwargs)


def test_dataset_missing_chosen_fails_before_training(tmp_path, model, tokenizer):
    bad = datasets.Dataset.from_list([{"prompt": "a", "rejected": "b"}])
    with pytest.raises(SchemaError, match="missing column.*chosen"):
        PreferenceTrainer(model, args=_config(tmp_path), train_dataset=bad,
                          processing_class=tokenizer)
    assert not list(tmp_path.glob("checkpoint-*"))


def test_objective_columns_are_required_and_reach_the_objective(tmp_path, model, tokenizer):
    with pytest.raises(SchemaError, match="pair_variance"):
        PreferenceTrainer(model, args=_config(tmp_path, objective="corrected_dpo"),
                          train_dataset=datasets.Dataset.from_list(PAIRS),
                          processing_class=tokenizer)
    rows = [{**p, "pair_variance": 0.25 * i, "annotator_id": f"a{i}"} for i, p in enumerate(PAIRS)]
    args = _config(tmp_path, objective="corrected_dpo")
    trainer = PreferenceTrainer(copy.deepcopy(model), args=args,
                                train_dataset=datasets.Dataset.from_list(rows),
                                processing_class=tokenizer)
    assert "annotator_id" not in trainer.train_dataset.column_names  # strings are not collated
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    assert batch["pair_variance"].tolist() == [0.0, 0.25, 0.5, 0.75]
    seen = {}
    original = trainer.objective.forward

    def spy(margin, batch=None):
        seen["variance"] = batch["pair_variance"]
        return original(margin, batch)

    trainer.objective.forward = spy
    with torch.no_grad():
        assert torch.isfinite(trainer.compute_loss(trainer.model, batch))
    assert seen["variance"].tolist() == [0.0, 0.25, 0.5, 0.75]


# ------------------------------------------------------------------ loss equalities
def _our_loss(tmp_path, model, tokenizer, batch, **kw):
    ds = datasets.Dataset.from_list(PAIRS)
    trainer = PreferenceTrainer(copy.deepcopy(model), args=_config(tmp_path, **kw),
                                train_dataset=ds, processing_class=tokenizer)
    trainer.model.eval()
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch)


def test_dpo_loss_equals_trl_dpo_trainer(tmp_path, model, tokenizer):
    trl = pytest.importorskip("trl")
    ds = datasets.Dataset.from_list(PAIRS)
    trl_args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True,
                             per_device_train_batch_size=len(PAIRS), beta=0.1, max_length=128,
                             loss_type=["sigmoid"], disable_tqdm=True,
                             bf16=False)  # TRL defaults to bf16 autocast; compare both in float32
    trl_trainer = trl.DPOTrainer(model=copy.deepcopy(model), ref_model=copy.deepcopy(model),
                                 args=trl_args, train_dataset=ds, processing_class=tokenizer)
    with torch.no_grad():
        perturb = torch.Generator().manual_seed(3)  # make policy != reference so margins are not 0
        for p in trl_trainer.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=perturb))
    policy = copy.deepcopy(trl_trainer.model)
    examples = [trl_trainer.train_dataset[i] for i in range(len(PAIRS))]
    ours = [tokenize_pair(p, tokenizer) for p in PAIRS]
    for theirs, mine in zip(examples, ours, strict=True):  # same tokenisation
        assert {k: theirs[k] for k in mine} == mine
    batch = trl_trainer.data_collator(examples)
    trl_trainer.model.eval()
    with torch.no_grad():
        trl_loss = trl_trainer.compute_loss(trl_trainer.model, dict(batch))
    ours_trainer = PreferenceTrainer(copy.deepcopy(model), ref_model=copy.deepcopy(model),
                                     args=_config(tmp_path, objective="dpo"), train_dataset=ds,
                                     processing_class=tokenizer)
    ours_trainer.model.load_state_dict(policy.state_dict(), strict=True)
    ours_trainer.model.eval()
    with torch.no_grad():
        our_loss = ours_trainer.compute_loss(ours_trainer.model, dict(batch))
    assert abs(float(trl_loss) - float(our_loss)) <= 1e-5
    assert float(our_loss) != pytest.approx(0.6931471805599453, abs=1e-3)  # margins not all zero


def test_mixdpo_with_point_mass_equals_dpo_exactly(tmp_path, model, tokenizer):
    policy = copy.deepcopy(model)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    batch = PreferenceCollator(tokenizer.pad_token_id)([tokenize_pair(p, tokenizer) for p in PAIRS])
    losses = {}
    for objective in ("dpo", "mixdpo"):
        trainer = PreferenceTrainer(copy.deepcopy(policy), ref_model=copy.deepcopy(model),
                                    args=_config(tmp_path, objective=objective,
                                                 **({"strength": "point"} if objective == "mixdpo"
                                                    else {})),
                                    train_dataset=datasets.Dataset.from_list(PAIRS),
                                    processing_class=tokenizer)
        with torch.no_grad():
            losses[objective] = trainer.compute_loss(trainer.model, dict(batch))
    assert torch.equal(losses["dpo"], losses["mixdpo"])
    assert float(losses["dpo"]) != pytest.approx(0.6931471805599453, abs=1e-3)


def test_precomputed_reference_logps_give_the_same_loss(tmp_path, model, tokenizer):
    policy = copy.deepcopy(model)
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(1.05)
    ds = datasets.Dataset.from_list(PAIRS)
    batch = PreferenceCollator(tokenizer.pad_token_id)([tokenize_pair(p, tokenizer) for p in PAIRS])
    live = PreferenceTrainer(copy.deepcopy(policy), ref_model=copy.deepcopy(model),
                             args=_config(tmp_path), train_dataset=ds, processing_class=tokenizer)
    pre = PreferenceTrainer(copy.deepcopy(policy), ref_model=copy.deepcopy(model),
                            args=_config(tmp_path, precompute_ref_log_probs=True), train_dataset=ds,
                            processing_class=tokenizer)
    assert pre.ref_model is None
    rows = [pre.train_dataset[i] for i in range(len(PAIRS))]
    pre_batch = pre.data_collator(rows)
    with torch.no_grad():
        torch.testing.assert_close(pre.compute_loss(pre.model, pre_batch),
                                   live.compute_loss(live.model, dict(batch)), rtol=0, atol=1e-6)


def test_precompute_in_longest_first_batches_equals_one_pair_at_a_time(tmp_path, model,
                                                                       tokenizer):
    """Batches of 3 over 8 pairs of varied lengths, scored longest first and written back to their
    rows, equal each pair scored alone in a padded row (full-vocabulary log_softmax)."""
    pairs = PAIRS + [{**p, "rejected": p["rejected"] * 3} for p in reversed(PAIRS)]
    trainer = PreferenceTrainer(copy.deepcopy(model), ref_model=copy.deepcopy(model),
                                args=_config(tmp_path, precompute_ref_log_probs=True,
                                             precompute_ref_batch_size=3),
                                train_dataset=datasets.Dataset.from_list(pairs),
                                processing_class=tokenizer)
    collate = PreferenceCollator(tokenizer.pad_token_id)
    with torch.no_grad():
        alone = [_brute_force_logps(model, collate([tokenize_pair(p, tokenizer)])) for p in pairs]
    got = {c: torch.tensor(list(trainer.train_dataset[c]), dtype=torch.float64)
           for c in ("ref_chosen_logps", "ref_rejected_logps")}
    torch.testing.assert_close(got["ref_chosen_logps"], torch.stack([a[0] for a in alone]),
                               rtol=0, atol=1e-4)
    torch.testing.assert_close(got["ref_rejected_logps"], torch.stack([a[1] for a in alone]),
                               rtol=0, atol=1e-4)


def test_longest_first_batches_sort_by_pair_tokens_keeping_row_order_on_ties():
    ds = datasets.Dataset.from_dict({"prompt_ids": [[1], [1, 2], [1], [1, 2, 3]],
                                     "chosen_ids": [[1], [1], [1, 2], [1]],
                                     "rejected_ids": [[1], [1], [1], []]})
    # tokens per pair: 3, 4, 4, 4
    assert longest_first_batches(ds, 2) == [[1, 2], [3, 0]]
    assert longest_first_batches(ds, 8) == [[1, 2, 3, 0]]


def test_precompute_batch_size_must_be_a_count(tmp_path):
    with pytest.raises(ConfigError, match="precompute_ref_batch_size"):
        _config(tmp_path, precompute_ref_batch_size=0)


def test_strength_parameters_get_their_own_optimizer_group(tmp_path, model, tokenizer):
    trainer = PreferenceTrainer(copy.deepcopy(model), args=_config(
        tmp_path, objective="mixdpo", strength="gamma", strength_learning_rate=3e-3,
        learning_rate=1e-6), train_dataset=datasets.Dataset.from_list(PAIRS),
        processing_class=tokenizer)
    optimizer = trainer.create_optimizer()
    strength_ids = {id(p) for p in trainer.objective.parameters()}
    assert strength_ids
    groups = [g for g in optimizer.param_groups if {id(p) for p in g["params"]} & strength_ids]
    assert len(groups) == 1 and groups[0]["lr"] == 3e-3
    assert {id(p) for p in groups[0]["params"]} == strength_ids
    assert all(g["lr"] == 1e-6 for g in optimizer.param_groups if g is not groups[0])


def test_peft_reference_is_the_base_model_with_adapters_disabled(tmp_path, model, tokenizer):
    peft = pytest.importorskip("peft")
    policy = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query_key_value"], task_type="CAUSAL_LM"))
    with torch.no_grad():  # LoRA's B starts at 0: make the adapter do something
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    batch = PreferenceCollator(tokenizer.pad_token_id)([tokenize_pair(p, tokenizer) for p in PAIRS])
    ds = datasets.Dataset.from_list(PAIRS)
    with_peft = PreferenceTrainer(policy, args=_config(tmp_path), train_dataset=ds,
                                  processing_class=tokenizer)
    assert with_peft.ref_model is None
    merged = copy.deepcopy(policy).merge_and_unload()
    explicit = PreferenceTrainer(merged, ref_model=copy.deepcopy(model), args=_config(tmp_path),
                                 train_dataset=ds, processing_class=tokenizer)
    with torch.no_grad():
        a = with_peft.compute_loss(with_peft.model, dict(batch))
        b = explicit.compute_loss(explicit.model, dict(batch))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert float(a) != pytest.approx(0.6931471805599453, abs=1e-4)


def test_precomputed_peft_reference_has_the_adapters_disabled(tmp_path, model, tokenizer):
    peft = pytest.importorskip("peft")
    policy = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query_key_value"], task_type="CAUSAL_LM"))
    with torch.no_grad():  # a trained adapter: the policy differs from its base model
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    trainer = PreferenceTrainer(policy, args=_config(tmp_path, precompute_ref_log_probs=True),
                                train_dataset=datasets.Dataset.from_list(PAIRS),
                                processing_class=tokenizer)
    rows = [trainer.train_dataset[i] for i in range(len(PAIRS))]
    stored = torch.tensor([[r["ref_chosen_logps"] for r in rows],
                           [r["ref_rejected_logps"] for r in rows]]).flatten()
    torch.testing.assert_close(stored.double(), _brute_force_logps(model, _padded(tokenizer)),
                               rtol=0, atol=1e-5)


def test_disabled_adapters_gives_the_base_model_and_restores_the_adapters(model):
    peft = pytest.importorskip("peft")
    from pluralign.training.trainer import disabled_adapters

    policy = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query_key_value"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[5, 9, 13, 2, 7]])
    base, adapted = model(input_ids=ids).logits, policy(input_ids=ids).logits
    assert not torch.allclose(base, adapted, atol=1e-3)

    def lora_state():  # per LoRA layer: adapters off?, which of its weights train
        return [(m.disable_adapters, tuple(p.requires_grad for p in m.parameters()))
                for m in policy.modules() if hasattr(m, "lora_A")]

    before = lora_state()
    with disabled_adapters(policy):
        torch.testing.assert_close(policy(input_ids=ids).logits, base, rtol=0, atol=1e-6)
        assert all(state[0] for state in lora_state())
    assert lora_state() == before
    torch.testing.assert_close(policy(input_ids=ids).logits, adapted, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="inside"), disabled_adapters(policy):
        raise RuntimeError("inside")
    assert lora_state() == before
    policy.base_model.disable_adapter_layers()  # already off: stays off
    with disabled_adapters(policy):
        pass
    assert all(state[0] for state in lora_state())


def test_chat_prompt_ids_are_the_same_for_training_margins_and_generation(tmp_path, monkeypatch):
    from pathlib import Path

    from prompt_paths import prompt_ids_by_consumer, template_prompt_ids

    from pluralign.data import load_preferences
    from pluralign.data.synthetic import make_population

    synthetic = make_population(n_annotators=2, pairs_per_annotator=2, chat=True).dataset
    prism = load_preferences(Path(__file__).parent / "fixtures" / "prism", format="prism",
                             chat=True)
    multi_turn = prism.select([max(range(len(prism)), key=lambda i: len(prism[i]["prompt"]))])
    texts = [m["content"] for ds in (synthetic, multi_turn) for row in ds
             for m in row["prompt"] + row["chosen"] + row["rejected"]]
    tok = build_tokenizer(texts, vocab_size=400)
    model = tiny_gpt_neox(len(tok), seed=2)
    for pairs, max_prompt_length in ((synthetic, 100), (multi_turn, 24)):
        seen = prompt_ids_by_consumer(model, tok, pairs, tmp_path, monkeypatch,
                                      max_length=200, max_prompt_length=max_prompt_length)
        expected = template_prompt_ids(tok, pairs["prompt"], max_prompt_length)
        assert seen == {"training": expected, "margins": expected, "generation": expected}
    whole = tok.apply_chat_template(multi_turn[0]["prompt"], add_generation_prompt=True)
    assert len(expected[0]) == 24 < len(whole["input_ids"])  # the truncation was exercised


# ------------------------------------------------------------------ mixed precision
def _padded(tokenizer):
    return PreferenceCollator(tokenizer.pad_token_id)([tokenize_pair(p, tokenizer) for p in PAIRS])


def _perturbed(model, seed=5):
    policy = copy.deepcopy(model)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return policy


def test_bf16_run_scores_policy_and_auto_reference_under_autocast(tmp_path, model, tokenizer):
    """bf16=True reaches the completion-only head (which bypasses the model's autocast-wrapped
    forward): the log-probs match an independent bf16-autocast computation far better than the
    float32 one; the default reference ('auto') is scored the same way."""
    policy = _perturbed(model)
    trainer = PreferenceTrainer(copy.deepcopy(policy), ref_model=copy.deepcopy(model),
                                args=_config(tmp_path, bf16=True),
                                train_dataset=datasets.Dataset.from_list(PAIRS),
                                processing_class=tokenizer)
    assert trainer.args.reference_dtype == "auto"
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    padded = _padded(tokenizer)
    with torch.no_grad():
        ours = {"policy": trainer._policy_logps(trainer.model, batch, True).double(),
                "reference": trainer._reference_logps(batch).double()}
        for name, net in (("policy", policy), ("reference", model)):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = _brute_force_logps(net, padded)
            fp32 = _brute_force_logps(net, padded)
            assert (ours[name] - bf16).abs().max() <= 2e-3, name
            assert (ours[name] - fp32).abs().max() > 5 * (ours[name] - bf16).abs().max(), name


def test_auto_reference_equal_to_the_policy_gives_zero_margins_in_bf16(tmp_path, model, tokenizer):
    trainer = PreferenceTrainer(copy.deepcopy(model), args=_config(tmp_path, bf16=True),
                                train_dataset=datasets.Dataset.from_list(PAIRS),
                                processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    with torch.no_grad():
        _, out = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    assert torch.equal(out["margin"], torch.zeros_like(out["margin"]))


def test_float32_reference_stays_float32_in_a_bf16_run(tmp_path, model, tokenizer):
    """The paper's setting: under bf16 the float32 reference is scored outside autocast, equal to
    the plain float32 computation."""
    from pluralign.training.packing import batch_sequence_logps

    trainer = PreferenceTrainer(copy.deepcopy(_perturbed(model)), ref_model=copy.deepcopy(model),
                                args=_config(tmp_path, bf16=True, reference_dtype="float32"),
                                train_dataset=datasets.Dataset.from_list(PAIRS),
                                processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    padded = _padded(tokenizer)
    with torch.no_grad():
        ref = trainer._reference_logps(batch)
        assert ref.dtype == torch.float32
        torch.testing.assert_close(ref, batch_sequence_logps(model, batch), rtol=0, atol=1e-6)
        torch.testing.assert_close(ref.double(), _brute_force_logps(model, padded), rtol=0,
                                   atol=1e-5)
