"""Test helper: the prompt token ids each consumer actually feeds the model, for one dataset.

Training: the rows of :class:`PreferenceTrainer`'s own train dataloader (prompt = the tokens before
the completion mask). Margins: the batches :func:`preference_margins` hands to ``sequence_logps``.
Generation: the ``input_ids`` that reach ``model.generate`` (left padding removed by the attention
mask). Each is returned as a sorted list of tuples (one per pair; the trainer shuffles).
:func:`template_prompt_ids` is the independent reference they are compared with.
"""

from __future__ import annotations

import datasets
import torch

from pluralign.evaluation import margins as margins_module
from pluralign.evaluation.generation import generate_responses
from pluralign.training import PreferenceConfig, PreferenceTrainer


def _chosen_prompts(input_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[tuple]:
    rows = []
    for ids, mask in zip(input_ids[: len(input_ids) // 2], completion_mask, strict=False):
        start = int(mask.nonzero()[0])
        rows.append(tuple(ids[:start].tolist()))
    return rows


def prompt_ids_by_consumer(model, tokenizer, pairs: datasets.Dataset, tmp_path, monkeypatch,
                           max_length: int, max_prompt_length: int) -> dict[str, list[tuple]]:
    """``{"training": ..., "margins": ..., "generation": ...}`` prompt ids of every pair."""
    args = PreferenceConfig(output_dir=str(tmp_path), objective="dpo", max_length=max_length,
                            max_prompt_length=max_prompt_length, report_to=[], use_cpu=True,
                            per_device_train_batch_size=len(pairs), save_strategy="no",
                            disable_tqdm=True, seed=0,
                            # padded rows, whose prompt is readable per pair; the packed layouts
                            # give the same log-probs (tests/test_packing.py)
                            share_prompt=False, padding_free=False)
    trainer = PreferenceTrainer(model, args=args, train_dataset=pairs, processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    training = _chosen_prompts(batch["input_ids"], batch["completion_mask"])

    seen: list[tuple] = []
    original = margins_module.sequence_logps

    def recording(model, input_ids, attention_mask, completion_mask, *a, **kw):
        seen.extend(_chosen_prompts(input_ids, completion_mask))
        return original(model, input_ids, attention_mask, completion_mask, *a, **kw)

    monkeypatch.setattr(margins_module, "sequence_logps", recording)
    margins_module.preference_margins(model, None, pairs, tokenizer, max_length=max_length,
                                      max_prompt_length=max_prompt_length, progress=False)

    generated: list[tuple] = []
    generate = model.generate

    def recording_generate(input_ids, attention_mask, **kw):
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            generated.append(tuple(ids[mask.bool()].tolist()))
        return generate(input_ids=input_ids, attention_mask=attention_mask, **kw)

    monkeypatch.setattr(model, "generate", recording_generate)
    generate_responses(model, tokenizer, list(pairs["prompt"]), max_new_tokens=1,
                       max_prompt_length=max_prompt_length, progress=False)
    return {"training": sorted(training), "margins": sorted(seen), "generation": sorted(generated)}


def template_prompt_ids(tokenizer, prompts, max_prompt_length: int) -> list[tuple]:
    """Reference: each prompt rendered as text by the tokenizer's own chat template with the
    generation prompt, tokenised without special tokens, its last ``max_prompt_length`` kept."""
    rendered = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                for p in prompts]
    return sorted(tuple(tokenizer(text, add_special_tokens=False)["input_ids"][-max_prompt_length:])
                  for text in rendered)
