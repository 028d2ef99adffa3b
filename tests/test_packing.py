"""Packed batches (shared prompt, padding-free) against the padded computation they replace.

The reference is the unchanged padded path: PreferenceCollator + sequence_logps, one row per
sequence. Pairs come from tokenize_pair with truncation active (prompts longer than
max_prompt_length, completions cut at max_length), plus hypothesis-drawn token lengths.
"""

import datasets
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_training_smollm2 import (  # noqa: F401  (session fixtures, shared conversion)
    NAME,
    chat_pairs,
    needs_smollm2,
    smol_tokenizer,
    smollm2_cache,
)
from transformers import LlamaConfig, LlamaForCausalLM

from pluralign.errors import ConfigError
from pluralign.training import (
    PreferenceConfig,
    PreferenceTrainer,
    build_tokenizer,
    load_causal_lm,
    tiny_gpt_neox,
    tokenize_pair,
)
from pluralign.training.logps import sequence_logps
from pluralign.training.packing import (
    PackedPreferenceCollator,
    _row_groups,
    batch_sequence_logps,
    block_attention_mask,
    pack_pairs,
    packed_sequence_logps,
)
from pluralign.training.tokenization import PreferenceCollator

LAYOUTS = [(True, False), (False, True), (True, True)]  # (share_prompt, padding_free)
TEXTS = [
    ("Name a colour.", "Blue.", "I would rather talk about the weather, which is grey today."),
    ("Q: " + "very long question " * 6, "Short.", "A somewhat longer answer than the other."),
    ("Hi", "Hello there, how can I help you today with anything at all?", "Hey."),
    ("Tell me a joke about cats and dogs please.", "No.", "Why did the cat sit on it? Warmth."),
]


def _pairs(tokenizer, max_length=24, max_prompt_length=8):
    pairs = [
        tokenize_pair({"prompt": p, "chosen": c, "rejected": r}, tokenizer, max_length,
                      max_prompt_length)
        for p, c, r in TEXTS
    ]
    lengths = [(len(x["prompt_ids"]), len(x["chosen_ids"]), len(x["rejected_ids"])) for x in pairs]
    assert any(p == max_prompt_length for p, _, _ in lengths)  # truncation is exercised
    assert any(p + max(c, r) == max_length for p, c, r in lengths)
    assert len(set(lengths)) == len(lengths)
    return pairs, tokenizer.pad_token_id


def _padded(model, pairs, pad_id):
    batch = PreferenceCollator(pad_id)(pairs)
    return sequence_logps(model, batch["input_ids"], batch["attention_mask"],
                          batch["completion_mask"])


def _tiny_llama(vocab, attn):
    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, attn_implementation=attn)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _tiny_neox(vocab, attn):
    model = tiny_gpt_neox(vocab, seed=3)
    model.set_attn_implementation(attn)
    return model


MODELS = {"gpt_neox": _tiny_neox, "llama": _tiny_llama}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer([t for triple in TEXTS for t in triple], vocab_size=300)


# ---------------------------------------------------------------------------- exactness
# transformers' eager attention takes its softmax in float32 whatever the model's dtype, so a
# float64 model with eager attention agrees to float32 rounding only (rows of different widths
# sum the softmax in different orders); SDPA computes in float64.
ATTENTION_ATOL = {"sdpa": 1e-10, "eager": 1e-6}


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("attn", sorted(ATTENTION_ATOL))
@pytest.mark.parametrize(("share_prompt", "padding_free"), LAYOUTS)
@pytest.mark.parametrize("completion_head", [True, False])
def test_packed_logps_equal_padded_float64(tokenizer, arch, attn, share_prompt, padding_free,
                                           completion_head, one_thread):
    pairs, pad_id = _pairs(tokenizer)
    model = MODELS[arch](len(tokenizer), attn).double()
    expected = _padded(model, pairs, pad_id)
    batch = pack_pairs(pairs, pad_id, share_prompt, padding_free)
    got = packed_sequence_logps(model, batch, completion_head)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=ATTENTION_ATOL[attn])


@pytest.mark.parametrize(("share_prompt", "padding_free"), LAYOUTS)
def test_packed_logps_equal_padded_float32(tokenizer, share_prompt, padding_free, one_thread):
    pairs, pad_id = _pairs(tokenizer, max_length=40, max_prompt_length=12)
    model = tiny_gpt_neox(len(tokenizer), seed=3, hidden_size=128, num_hidden_layers=3)
    expected = _padded(model, pairs, pad_id)
    got = packed_sequence_logps(model, pack_pairs(pairs, pad_id, share_prompt, padding_free))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("share_prompt", "padding_free"), LAYOUTS)
def test_packed_gradients_equal_padded(tokenizer, share_prompt, padding_free, one_thread):
    """fwd + bwd: the policy's gradient of a DPO-like loss is the same in both layouts."""
    pairs, pad_id = _pairs(tokenizer)
    model = tiny_gpt_neox(len(tokenizer), seed=3).double()

    def grads(logps):
        chosen, rejected = logps.chunk(2)
        loss = -torch.nn.functional.logsigmoid(0.1 * (chosen - rejected)).mean()
        return torch.autograd.grad(loss, list(model.parameters()))

    expected = grads(_padded(model, pairs, pad_id))
    got = grads(packed_sequence_logps(model, pack_pairs(pairs, pad_id, share_prompt,
                                                        padding_free)))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-10)


_LENGTHS = st.tuples(st.integers(0, 6), st.integers(1, 7), st.integers(1, 7))


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(_LENGTHS, min_size=1, max_size=5), share_prompt=st.booleans(),
       padding_free=st.booleans(), multiple=st.sampled_from([None, 8]), seed=st.integers(0, 99))
def test_packed_logps_equal_padded_for_any_lengths(lengths, share_prompt, padding_free,
                                                  multiple, seed):
    """Any prompt/completion lengths, empty prompts included (the first completion token then
    has no context and is not scored in either layout)."""
    gen = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(1, 40, (n,), generator=gen).tolist()

    pairs = [{"prompt_ids": ids(p), "chosen_ids": ids(c), "rejected_ids": ids(r)}
             for p, c, r in lengths]
    model = _MODEL_F64
    expected = _padded(model, pairs, 0)
    batch = pack_pairs(pairs, 0, share_prompt, padding_free, multiple)
    torch.testing.assert_close(packed_sequence_logps(model, batch), expected, rtol=0, atol=1e-10)
    _check_row_groups(batch, 0)


def _check_row_groups(batch, pad_id):
    """Row groups tile the rows in order, and the columns a group cuts off are padding."""
    groups = batch["row_groups"]
    assert [g[0] for g in groups] == [0, *(g[1] for g in groups[:-1])]
    assert groups[-1][1] == batch["input_ids"].shape[0]
    assert sum(g[3] for g in groups) == len(batch["logp_rows"])
    for first, end, width, _ in groups:
        assert (batch["input_ids"][first:end, width:] == pad_id).all()
        in_group = (batch["logp_rows"] >= first) & (batch["logp_rows"] < end)
        assert (batch["logp_sources"][in_group] < width).all()


def test_rows_of_very_different_widths_run_in_groups_with_equal_logps_and_gradients():
    gen = torch.Generator().manual_seed(0)
    pairs = [{"prompt_ids": torch.randint(1, 40, (p,), generator=gen).tolist(),
              "chosen_ids": torch.randint(1, 40, (c,), generator=gen).tolist(),
              "rejected_ids": torch.randint(1, 40, (r,), generator=gen).tolist()}
             for p, c, r in [(9, 12, 10), (2, 1, 2), (8, 11, 12), (1, 2, 1), (3, 1, 1)]]
    model = _MODEL_F64
    batch = pack_pairs(pairs, 0, share_prompt=True, padding_free=False)
    assert [g[2] for g in batch["row_groups"]] == [31, 5]  # the two long rows, then the rest
    _check_row_groups(batch, 0)

    def grads(logps):
        model.zero_grad(set_to_none=True)
        (logps * torch.arange(1.0, 11.0, dtype=torch.float64)).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    expected = _padded(model, pairs, 0)
    got = packed_sequence_logps(model, batch)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    for g, e in zip(grads(got), grads(_padded(model, pairs, 0)), strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-10)


def test_row_groups_split_only_where_it_saves_tokens():
    assert _row_groups([10, 9, 3, 2], None) == [(0, 2, 10), (2, 4, 3)]
    assert _row_groups([10, 10, 9, 9], None) == [(0, 4, 10)]  # saving 2 of 40 < one call's cost
    assert _row_groups([10, 3], 8) == [(0, 1, 16), (1, 2, 8)]


_MODEL_F64 = tiny_gpt_neox(40, seed=5, hidden_size=32, num_hidden_layers=2).double()


# ---------------------------------------------------------------------------- layout
def test_block_mask_on_a_hand_example():
    """One row: pair 0 (prompt 2, chosen 1, rejected 2), then pair 1 (prompt 1, chosen 1,
    rejected 1), then one padding token. 1 = may attend (query row, key column)."""
    unit = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, -1]])
    segment = torch.tensor([[0, 0, 1, 2, 2, 0, 1, 2, 0]])
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert torch.equal(block_attention_mask(unit, segment)[0, 0], expected)


def test_pack_pairs_layout_of_a_small_batch():
    pairs = [{"prompt_ids": [5, 6], "chosen_ids": [7], "rejected_ids": [8, 9]},
             {"prompt_ids": [3], "chosen_ids": [4, 4, 4], "rejected_ids": [2]}]
    batch = pack_pairs(pairs, pad_token_id=0, share_prompt=True, padding_free=True)
    # widest unit: 5 tokens; first-fit decreasing puts pair 0 first, then pair 1 in a new row
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [3, 4, 4, 4, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 2, 3], [0, 1, 2, 3, 1]]
    # sequence 0/1: chosen of pair 0/1; 2/3: rejected. Each completion's first token is
    # predicted from the prompt's last column.
    scored = sorted(zip(*(batch[k].tolist() for k in
                          ("logp_sequences", "logp_rows", "logp_sources", "logp_targets")),
                        strict=True))
    assert scored == [(0, 0, 1, 7), (1, 1, 0, 4), (1, 1, 1, 4), (1, 1, 2, 4),
                      (2, 0, 1, 8), (2, 0, 3, 9), (3, 1, 0, 2)]
    assert batch["sequence_lengths"].tolist() == [1, 3, 2, 1]


def test_padding_free_rows_hold_fewer_tokens_than_padded_rows(tokenizer):
    pairs, pad_id = _pairs(tokenizer)
    padded = PreferenceCollator(pad_id)(pairs)["input_ids"].numel()
    shared = pack_pairs(pairs, pad_id, True, False)["input_ids"].numel()
    free = pack_pairs(pairs, pad_id, False, True)["input_ids"].numel()
    both = pack_pairs(pairs, pad_id, True, True)
    unique = sum(len(x["prompt_ids"]) + len(x["chosen_ids"]) + len(x["rejected_ids"])
                 for x in pairs)
    assert unique <= both["input_ids"].numel() <= min(shared, free)
    assert max(shared, free) < padded


def test_collator_keeps_numeric_columns(tokenizer):
    pairs, pad_id = _pairs(tokenizer)
    pairs = [{**x, "pair_variance": float(i), "ref_chosen_logps": -1.0}
             for i, x in enumerate(pairs)]
    batch = PackedPreferenceCollator(pad_id)(pairs)
    assert batch["pair_variance"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert batch["ref_chosen_logps"].dtype == torch.float32
    assert "completion_mask" not in batch and batch["attention_mask"].dim() == 4


def test_batch_sequence_logps_dispatches_on_the_layout(tokenizer, one_thread):
    pairs, pad_id = _pairs(tokenizer)
    model = tiny_gpt_neox(len(tokenizer), seed=3).double()
    padded = batch_sequence_logps(model, PreferenceCollator(pad_id)(pairs))
    packed = batch_sequence_logps(model, PackedPreferenceCollator(pad_id)(pairs))
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-10)


def test_shared_prompt_with_flash_attention_is_refused_naming_the_fix(tokenizer):
    pairs, pad_id = _pairs(tokenizer)
    model = tiny_gpt_neox(len(tokenizer), seed=3)
    model.config._attn_implementation = "flash_attention_2"  # (not installed: only the name)
    with pytest.raises(ConfigError, match="set share_prompt false"):
        packed_sequence_logps(model, pack_pairs(pairs, pad_id, share_prompt=True))


# ---------------------------------------------------------------------------- transformers
@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_transformers_isolates_sequences_packed_by_position_ids(tokenizer, arch, attn,
                                                                one_thread):
    """The flattening convention (reset position ids, no mask) gives the block-diagonal
    attention on CPU eager/SDPA, i.e. the explicit mask's result; a plain causal mask over the
    same row (no isolation) gives a different one, so the check can fail."""
    pairs, pad_id = _pairs(tokenizer)
    model = MODELS[arch](len(tokenizer), attn).double()
    batch = pack_pairs(pairs, pad_id, share_prompt=False, padding_free=True)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] < 2 * len(pairs)
    by_positions = packed_sequence_logps(model, batch)
    row_units = batch["position_ids"] == 0
    unit_ids = row_units.cumsum(1)
    explicit = dict(batch, attention_mask=block_attention_mask(unit_ids, torch.zeros_like(
        unit_ids)))
    torch.testing.assert_close(packed_sequence_logps(model, explicit), by_positions, rtol=0,
                               atol=1e-12)
    width = batch["input_ids"].shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril().expand(len(unit_ids), 1, -1, -1)
    leaky = packed_sequence_logps(model, dict(batch, attention_mask=causal))
    assert (leaky - by_positions).abs().max() > 1e-3


# ---------------------------------------------------------------------------- SmolLM2
@needs_smollm2
@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_smollm2_packed_logps_equal_padded(smollm2_cache, smol_tokenizer, chat_pairs,  # noqa: F811
                                          dtype, atol):
    pairs = [tokenize_pair(ex, smol_tokenizer, max_length=128, max_prompt_length=64)
             for ex in chat_pairs]
    pairs += [tokenize_pair(ex, smol_tokenizer, max_length=length, max_prompt_length=24)
              for ex in chat_pairs for length in (48, 30)]  # truncated prompts, completions
    lengths = [(len(x["prompt_ids"]), len(x["chosen_ids"]), len(x["rejected_ids"])) for x in pairs]
    assert any(p == 24 for p, _, _ in lengths)
    assert any(p + max(c, r) == 30 for p, c, r in lengths) and len(set(lengths)) > 3
    model = load_causal_lm(NAME, dtype=dtype)
    pad_id = smol_tokenizer.pad_token_id
    with torch.inference_mode():
        expected = _padded(model, pairs, pad_id)
        for share_prompt, padding_free in LAYOUTS:
            got = packed_sequence_logps(model, pack_pairs(pairs, pad_id, share_prompt,
                                                          padding_free))
            torch.testing.assert_close(got, expected, rtol=0, atol=atol)


# ---------------------------------------------------------------------------- trainer wiring
def _trainer(tmp_path, tokenizer, **kw):
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in TEXTS]
    args = PreferenceConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                            disable_tqdm=True, per_device_train_batch_size=4, save_strategy="no",
                            max_length=24, max_prompt_length=8, **kw)
    model = tiny_gpt_neox(len(tokenizer), seed=3)
    return PreferenceTrainer(model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tokenizer)


@pytest.mark.parametrize(("share_prompt", "padding_free"), LAYOUTS)
def test_trainer_loss_and_gradient_equal_in_packed_and_padded_batches(
        tmp_path, tokenizer, share_prompt, padding_free, one_thread):
    results = []
    for layout in ({"share_prompt": False, "padding_free": False},
                   {"share_prompt": share_prompt, "padding_free": padding_free}):
        trainer = _trainer(tmp_path, tokenizer, **layout)
        with torch.no_grad():  # policy ≠ reference, so the margins are not all 0
            for p in trainer.model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        assert ("position_ids" in batch) == (layout != {"share_prompt": False,
                                                        "padding_free": False})
        loss, out = trainer.compute_loss(trainer.model, batch, return_outputs=True)
        loss.backward()
        grad = trainer.model.gpt_neox.embed_in.weight.grad.clone()
        results.append((loss.detach(), out["margin"], grad))
    (loss0, margin0, grad0), (loss1, margin1, grad1) = results
    assert margin0.abs().min() > 1e-4
    torch.testing.assert_close(margin1, margin0, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad1, grad0, rtol=0, atol=1e-6)


def test_trainer_defaults_pack_with_a_shared_prompt(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer)
    assert isinstance(trainer.data_collator, PackedPreferenceCollator)
    assert trainer.data_collator.share_prompt and trainer.data_collator.padding_free
