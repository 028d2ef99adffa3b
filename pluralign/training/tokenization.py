"""Tokenisation of preference pairs and the collator that batches chosen and rejected together.

A prompt becomes token ids in one place, :func:`prompt_token_ids`, which training (here),
margins (:mod:`pluralign.evaluation.margins`, through :func:`tokenize_pair`) and generation
(:mod:`pluralign.evaluation.generation`) all call, so a policy is scored and sampled on the very
ids it was trained on. A pair ``(prompt, chosen, rejected)`` becomes ``prompt_ids``,
``chosen_ids`` and ``rejected_ids``:

* plain strings: ``tokenizer(prompt)`` and ``tokenizer(prompt + completion + eos)``; the completion
  is what follows the longest common prefix of the two, so a BPE merge across the boundary is
  handled.
* chat messages (lists of ``{"role", "content"}``): the tokenizer's chat template renders
  ``prompt`` with the generation prompt and ``prompt + completion`` without it; same prefix rule.
  The completion ends at its last EOS token when it has one: chat templates append text after the
  end-of-turn token (SmolLM2/ChatML: ``<|im_end|>`` then ``"\n"``) that generation never produces,
  so it would add a near-constant term to log π(y|x) that the policy never has to emit.

Truncation follows the MixDPO paper's setting (max_length 128, max_prompt_length 64): the prompt
keeps its last ``max_prompt_length`` tokens (the end of the conversation matters most), and each
completion keeps its first ``max_length - len(prompt)`` tokens. Tokenisation happens once, in
``Dataset.map`` before training, never per step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from pluralign.data import SchemaError
from pluralign.data.schema import is_conversational
from pluralign.errors import ConfigError

#: Token columns produced by :func:`tokenize_pair`.
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
#: Per-pair reference log-probabilities written by precomputation.
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
#: Columns every preference dataset needs.
REQUIRED_COLUMNS = ("prompt", "chosen", "rejected")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _ids(tokenizer: PreTrainedTokenizerBase, messages_or_text: Any, **kwargs: Any) -> list[int]:
    if isinstance(messages_or_text, str):
        return list(tokenizer(messages_or_text, add_special_tokens=False)["input_ids"])
    out = tokenizer.apply_chat_template(messages_or_text, tokenize=True, **kwargs)
    if isinstance(out, Mapping):  # transformers 5 returns a BatchEncoding
        out = out["input_ids"]
    return list(out)


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: Any) -> list[int]:
    """Token ids of a prompt, untruncated: a string tokenised as is (no special tokens added);
    chat messages rendered by the tokenizer's own chat template with the generation prompt
    (``add_generation_prompt=True``), so the ids end where the assistant's answer begins.

    Raises:
        ConfigError: chat messages but the tokenizer has no chat template, or a prompt that is
            neither a string nor a list of messages.
    """
    if is_conversational(prompt):
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "the data are chat messages but the tokenizer has no chat template; set "
                "tokenizer.chat_template or convert the prompt/completions to strings"
            )
        return _ids(tokenizer, prompt, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise ConfigError(f"a prompt must be a string or a list of chat messages "
                          f"({{'role', 'content'}} dicts), got {type(prompt).__name__}")
    return _ids(tokenizer, prompt)


def keep_prompt_end(ids: list[int], max_prompt_length: int | None) -> list[int]:
    """The last ``max_prompt_length`` prompt tokens (none when it is 0; all when None)."""
    if max_prompt_length is None:
        return ids
    return ids[-max_prompt_length:] if max_prompt_length > 0 else []


def _through_last(ids: list[int], token_id: int | None) -> list[int]:
    """``ids`` up to and including the last ``token_id``; all of ``ids`` if it has none."""
    if token_id is None or token_id not in ids:
        return ids
    return ids[: len(ids) - ids[::-1].index(token_id)]


def tokenize_pair(
    example: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int = 128,
    max_prompt_length: int = 64,
    completions: Sequence[str] = ("chosen", "rejected"),
) -> dict[str, list[int]]:
    """Token ids of the prompt and of each completion in ``completions`` (see the module
    docstring)."""
    prompt = example["prompt"]
    conversational = is_conversational(prompt)
    prompt_ids = prompt_token_ids(tokenizer, prompt)
    eos = tokenizer.eos_token or ""
    full: dict[str, list[int]] = {}
    for name in completions:
        completion = example[name]
        if conversational:
            full[name] = _ids(tokenizer, list(prompt) + list(completion))
        else:
            text = completion if completion.endswith(eos) else completion + eos
            full[name] = _ids(tokenizer, prompt + text)
    cut = min([len(prompt_ids)] + [_common_prefix(prompt_ids, ids) for ids in full.values()])
    prompt_ids = keep_prompt_end(prompt_ids[:cut], max_prompt_length)
    room = max(max_length - len(prompt_ids), 0)
    out = {"prompt_ids": prompt_ids}
    for name, ids in full.items():
        completion = ids[cut:]
        if conversational:
            completion = _through_last(completion, tokenizer.eos_token_id)
        out[f"{name}_ids"] = completion[:room]
    return out


def check_pair_columns(
    dataset: datasets.Dataset, name: str = "train", required: tuple[str, ...] = REQUIRED_COLUMNS
) -> None:
    """Raise :class:`SchemaError` (before any model work) if pair columns are missing or no rows."""
    missing = [c for c in required if c not in dataset.column_names]
    if missing:
        raise SchemaError(
            f"{name} dataset: missing column(s) {', '.join(missing)} "
            f"(has {', '.join(dataset.column_names)}); a preference dataset needs "
            f"{', '.join(repr(c) for c in required)} — load it with "
            "pluralign.data.load_preferences or rename its columns"
        )
    if len(dataset) == 0:
        raise SchemaError(f"{name} dataset: no rows; give at least one preference pair")


@dataclass
class PreferenceCollator:
    """Batch tokenised pairs into one ``[2B, L]`` tensor: the B chosen rows first, then the B
    rejected rows.

    Returns ``input_ids`` (right-padded with ``pad_token_id``), ``attention_mask``,
    ``completion_mask`` (1 on completion tokens only) and, as float tensors of shape ``[B]``, every
    other numeric per-pair column present in the examples (reference log-probs, ``pair_variance``,
    ``agreement``, ...), so that objectives can read annotator-level information from the batch.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [ex["prompt_ids"] + ex["chosen_ids"] for ex in examples]
        rows += [ex["prompt_ids"] + ex["rejected_ids"] for ex in examples]
        prompt_lens = [len(ex["prompt_ids"]) for ex in examples] * 2
        width = max(len(r) for r in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, p) in enumerate(zip(rows, prompt_lens, strict=True)):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
            completion_mask[i, p : len(row)] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "completion_mask": completion_mask,
        }
        batch.update(per_pair_columns(examples))
        return batch


def per_pair_columns(examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Every numeric per-pair column of ``examples`` (reference log-probs, ``pair_variance``,
    ``agreement``, ...) as a float32 ``[B]`` tensor."""
    return {
        key: torch.tensor([float(ex[key]) for ex in examples], dtype=torch.float32)
        for key, value in examples[0].items()
        if key not in TOKEN_COLUMNS and isinstance(value, (int, float, bool))
    }
