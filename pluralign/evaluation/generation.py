"""Generation of responses from a policy (and its SFT baseline) for judged win rates.

Prompts are rendered as in training (plain text as is; chat messages through the tokenizer's chat
template with the generation prompt), left-padded, and decoded with ``model.generate``; only the
new tokens are returned. Greedy by default so a run is reproducible; sampling is seeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pluralign.evaluation.errors import EvaluationError
from pluralign.training.tokenization import is_conversational


def _render(tokenizer: PreTrainedTokenizerBase, prompt: Any) -> str:
    if is_conversational(prompt):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise EvaluationError(f"prompt must be a string or chat messages, got {type(prompt)}")
    return prompt


def generate_responses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                       prompts: Sequence[Any], *, max_new_tokens: int = 48,
                       batch_size: int = 16, do_sample: bool = False, temperature: float = 1.0,
                       seed: int = 0, progress: bool = True) -> list[str]:
    """One decoded completion per prompt (special tokens stripped)."""
    texts = [_render(tokenizer, p) for p in prompts]
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    device = next(model.parameters()).device
    out: list[str] = []
    generator_state = torch.random.fork_rng(devices=[])
    try:
        with generator_state, torch.inference_mode():
            torch.manual_seed(seed)
            for s in tqdm(range(0, len(texts), batch_size), desc="Generating",
                          disable=not progress):
                enc = tokenizer(texts[s:s + batch_size], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
                kwargs = {"do_sample": do_sample, "max_new_tokens": max_new_tokens,
                          "pad_token_id": pad_id}
                if do_sample:
                    kwargs["temperature"] = temperature
                ids = model.generate(**enc, **kwargs)
                new = ids[:, enc["input_ids"].shape[1]:]
                out += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    return out
