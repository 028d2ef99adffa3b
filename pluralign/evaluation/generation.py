"""Generation of responses from a policy (and its SFT baseline) for judged win rates.

Prompts are tokenised by the functions training and margins use
(:func:`pluralign.training.tokenization.prompt_token_ids`: plain text as is; chat messages through
the tokenizer's own chat template with the generation prompt; with ``max_prompt_length``, the last
tokens kept by :func:`~pluralign.training.tokenization.keep_prompt_end`), left-padded, and decoded
with ``model.generate``; only the new tokens are returned. Greedy by default so a run is
reproducible; sampling is seeded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pluralign.errors import ConfigError
from pluralign.evaluation.errors import EvaluationError
from pluralign.training.tokenization import keep_prompt_end, prompt_token_ids


def distinct_prompts(prompts: Iterable[Any], limit: int | None = None) -> list[Any]:
    """The distinct ``prompts``, first seen first, at most ``limit`` of them; chat prompts (lists
    of messages, which cannot be dict keys) are compared by value through their ``repr``."""
    return list({repr(p): p for p in prompts}.values())[:limit]


def prompt_text(prompt: Any) -> str:
    """A prompt as the text a judge reads: itself, or a chat prompt's last message."""
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def _left_padded(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """``input_ids`` / ``attention_mask`` of ``rows`` padded on the left to one width."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, width - len(row):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def generate_responses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                       prompts: Sequence[Any], *, max_new_tokens: int = 48,
                       batch_size: int = 16, do_sample: bool = False, temperature: float = 1.0,
                       seed: int = 0, max_prompt_length: int | None = None,
                       progress: bool = True) -> list[str]:
    """One decoded completion per prompt (special tokens stripped).

    ``max_prompt_length`` keeps each prompt's last tokens as training does (pass the training
    value to sample on the ids the policy was trained on); None keeps whole prompts.
    """
    try:
        rows = [keep_prompt_end(prompt_token_ids(tokenizer, p), max_prompt_length)
                for p in prompts]
    except ConfigError as exc:
        raise EvaluationError(str(exc)) from exc
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    device = next(model.parameters()).device
    out: list[str] = []
    generator_state = torch.random.fork_rng(devices=[])
    with generator_state, torch.inference_mode():
        torch.manual_seed(seed)
        for s in tqdm(range(0, len(rows), batch_size), desc="Generating", disable=not progress):
            enc = {k: v.to(device) for k, v in _left_padded(rows[s:s + batch_size], pad_id).items()}
            kwargs = {"do_sample": do_sample, "max_new_tokens": max_new_tokens,
                      "pad_token_id": pad_id}
            if do_sample:
                kwargs["temperature"] = temperature
            ids = model.generate(**enc, **kwargs)
            new = ids[:, enc["input_ids"].shape[1]:]
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
    return out
