"""Issue 15 #1 and #2: staged SFT checkpoints, resume from the last complete checkpoint, and run
folders that refuse checkpoints of another configuration."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from transformers import Trainer, TrainerCallback

from pluralign.training import SFTConfig, build_tokenizer, tiny_gpt_neox
from pluralign.training.sft import build_sft_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [{"prompt": f"Question {i}: which is kinder?",
         "chosen": " Helping a friend." if i % 2 else " Sharing the meal."} for i in range(24)]


def _sft(out: Path, **kw) -> Trainer:
    tokenizer = build_tokenizer([r["prompt"] + r["chosen"] for r in ROWS], 300)
    args = SFTConfig(output_dir=str(out), learning_rate=1e-3, optim="adamw_torch",
                     per_device_train_batch_size=8, max_steps=6, save_steps=2, logging_steps=1,
                     seed=0, use_cpu=True, report_to="none", disable_tqdm=True, **kw)
    model = tiny_gpt_neox(len(tokenizer), seed=0, hidden_size=32, intermediate_size=64)
    return build_sft_trainer(model, tokenizer, datasets.Dataset.from_list(ROWS), args)


class _StepRecorder(TrainerCallback):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(state.global_step)


def test_sft_crash_mid_save_leaves_no_partial_checkpoint_and_resume_uses_the_last_one(
        tmp_path, monkeypatch):
    """Before: plain Trainer saves left a partial checkpoint-4 (model and optimizer written, the rng
    state not), which resume then picked."""
    original = Trainer._save_rng_state
    calls = {"n": 0}

    def crash_on_second_save(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:  # checkpoint-4: model and optimizer written, rng state not yet
            raise KeyboardInterrupt
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        _sft(tmp_path / "run").train()
    monkeypatch.setattr(Trainer, "_save_rng_state", original)
    visible = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name[0] != ".")
    assert visible == ["checkpoint-2"]

    resumed = _sft(tmp_path / "run")
    assert not (tmp_path / "run" / ".staging").exists()  # the killed save's leftovers are gone
    steps = _StepRecorder()
    resumed.add_callback(steps)
    resumed.train(resume_from_checkpoint=True)
    assert steps.seen == [3, 4, 5, 6]  # steps 1-2 came from checkpoint-2, not retrained
