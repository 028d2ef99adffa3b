"""A tiny GPT-NeoX learns a real preference signal; SFT trains on prompt + chosen only."""

from __future__ import annotations

import math

import datasets
import pytest
import torch

from pluralign.data.synthetic import PopulationConfig, make_population
from pluralign.training import (
    PreferenceConfig,
    PreferenceTrainer,
    SFTConfig,
    build_tokenizer,
    run_sft,
    tiny_gpt_neox,
)
from pluralign.training.sft import SFTCollator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_dpo_on_a_synthetic_population_beats_chance_on_held_out_pairs(tmp_path):
    torch.manual_seed(0)
    # Homogeneous annotators with a strong point-mass beta: labels agree with the shared reward on
    # ~88% of pairs, and the reward is carried by words of the responses ("compact" text).
    population = make_population(PopulationConfig(
        n_annotators=30, pairs_per_annotator=16, n_prompts=30, text_style="compact",
        homogeneous=True, strength="point", beta=4.0, seed=0))
    split = population.dataset.train_test_split(test_size=0.25, seed=0)
    train, test = split["train"], split["test"]
    tokenizer = build_tokenizer([r["prompt"] + r["chosen"] + r["rejected"] for r in train], 400)
    model = tiny_gpt_neox(len(tokenizer), seed=0, hidden_size=32, intermediate_size=64)
    args = PreferenceConfig(
        output_dir=str(tmp_path), learning_rate=3e-3, optim="adamw_torch",
        per_device_train_batch_size=16, num_train_epochs=3, save_strategy="no", seed=0,
        max_length=64, max_prompt_length=32, use_cpu=True, report_to="none", disable_tqdm=True)
    trainer = PreferenceTrainer(model, args=args, train_dataset=train, eval_dataset=test,
                                processing_class=tokenizer)
    before = trainer.evaluate()
    assert before["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    trainer.train()
    after = trainer.evaluate()
    n = len(test)
    # Chance is 0.5; 0.70 is more than 4 binomial standard deviations above it for n = 120.
    assert after["eval_accuracy"] >= 0.70, after
    assert (after["eval_accuracy"] - 0.5) / math.sqrt(0.25 / n) > 4
    assert after["eval_margin_mean"] > 0 and after["eval_loss"] < math.log(2) - 0.1


def test_sft_masks_the_prompt_and_lowers_the_completion_loss(tmp_path):
    rows = [{"prompt": f"Q{i % 4}: the answer is", "chosen": " yes, always.",
             "rejected": " no."} for i in range(32)]
    tokenizer = build_tokenizer([r["prompt"] + r["chosen"] for r in rows], 300)
    batch = SFTCollator(tokenizer.pad_token_id)([
        {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9]}, {"prompt_ids": [5], "chosen_ids": [4]}])
    assert batch["labels"].tolist() == [[-100, -100, -100, 8, 9], [-100, 4, -100, -100, -100]]
    model = tiny_gpt_neox(len(tokenizer), seed=0, hidden_size=32, intermediate_size=64)
    args = SFTConfig(output_dir=str(tmp_path), learning_rate=1e-2, optim="adamw_torch",
                     per_device_train_batch_size=8, num_train_epochs=3, logging_steps=1,
                     save_strategy="no", use_cpu=True, report_to="none", disable_tqdm=True)
    trainer = run_sft(model, tokenizer, datasets.Dataset.from_list(rows), args)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.5 * losses[0]
