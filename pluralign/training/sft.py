"""Supervised fine-tuning on ``prompt + chosen`` (the paper starts every preference run from SFT on
the same dataset, [MixDPO, App. E]). The loss is the mean token cross-entropy over completion
tokens only; prompt tokens are masked with -100. Tokenisation and truncation are those of the
preference trainer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainingArguments

from pluralign.training.checkpoints import StagedCheckpoints
from pluralign.training.config import check_steps
from pluralign.training.launch import CheckedLaunch
from pluralign.training.tokenization import check_pair_columns, tokenize_pair
from pluralign.validation import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    check_fields,
    check_lengths,
)

IGNORE_INDEX = -100


@dataclass
class SFTConfig(TrainingArguments):
    """Training arguments for :func:`run_sft` (sequence lengths as in the preference runs)."""

    max_length: int = field(
        default=128, metadata={"help": "Max prompt + completion tokens (paper: 128)."}
    )
    max_prompt_length: int = field(default=64, metadata={"help": "Max prompt tokens (paper: 64)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "SFT learning rate."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Examples per device."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over prompt + chosen."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps."})

    def __post_init__(self) -> None:
        check_fields(self, {
            "learning_rate": NON_NEGATIVE, "num_train_epochs": POSITIVE, "seed": SEED,
            **dict.fromkeys(("per_device_train_batch_size", "per_device_eval_batch_size",
                             "gradient_accumulation_steps"), COUNT),
        })
        check_lengths(self.max_length, self.max_prompt_length, "SFTConfig")
        check_steps(self)
        super().__post_init__()


@dataclass
class SFTCollator:
    """Right-pad ``prompt_ids + chosen_ids``; ``labels`` are -100 on prompt and padding
    positions."""

    pad_token_id: int

    def __call__(self, examples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(ex["prompt_ids"]) + len(ex["chosen_ids"]) for ex in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        for i, ex in enumerate(examples):
            p, c = len(ex["prompt_ids"]), len(ex["chosen_ids"])
            input_ids[i, : p + c] = torch.tensor(ex["prompt_ids"] + ex["chosen_ids"])
            attention_mask[i, : p + c] = 1
            labels[i, p : p + c] = input_ids[i, p : p + c]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def tokenize_sft(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_prompt_length: int,
) -> datasets.Dataset:
    """``prompt_ids`` and ``chosen_ids`` for every row; all other columns dropped."""
    check_pair_columns(dataset, "SFT", required=("prompt", "chosen"))
    return dataset.map(
        tokenize_pair,
        remove_columns=dataset.column_names,
        desc="Tokenizing SFT examples",
        fn_kwargs={
            "tokenizer": tokenizer,
            "max_length": max_length,
            "max_prompt_length": max_prompt_length,
            "completions": ("chosen",),
        },
    )


class SFTTrainer(CheckedLaunch, StagedCheckpoints, Trainer):
    """``transformers.Trainer`` whose checkpoints are staged and renamed into place once complete
    (so a kill mid-save leaves the previous checkpoint as the last one) and carry the run's
    fingerprint; ``train(resume_from_checkpoint=True)`` uses the last complete checkpoint."""


def build_sft_trainer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: datasets.Dataset,
    args: SFTConfig,
    eval_dataset: datasets.Dataset | None = None,
    run_fingerprint: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> SFTTrainer:
    """An :class:`SFTTrainer` for SFT on prompt + chosen (prompt tokens masked).

    ``run_fingerprint`` (see :func:`pluralign.training.checkpoints.run_fingerprint`) is stored in
    every checkpoint and checked on ``train(resume_from_checkpoint=True)``.
    """
    tok = {
        "tokenizer": tokenizer,
        "max_length": args.max_length,
        "max_prompt_length": args.max_prompt_length,
    }
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    args.remove_unused_columns = False
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=tokenize_sft(train_dataset, **tok),
        eval_dataset=None if eval_dataset is None else tokenize_sft(eval_dataset, **tok),
        data_collator=SFTCollator(pad_id),
        processing_class=tokenizer,
        **kwargs,
    )
    trainer.run_fingerprint = run_fingerprint
    return trainer


def run_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: datasets.Dataset,
    args: SFTConfig,
    eval_dataset: datasets.Dataset | None = None,
    resume_from_checkpoint: str | bool | None = None,
) -> SFTTrainer:
    """Run SFT to completion and return the trainer (its ``state.log_history`` holds the losses)."""
    trainer = build_sft_trainer(model, tokenizer, train_dataset, args, eval_dataset)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer
