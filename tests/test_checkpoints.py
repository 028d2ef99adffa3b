"""Issue 15 #1 and #2: staged SFT checkpoints, resume from the last complete checkpoint, and run
folders that refuse checkpoints of another configuration."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import datasets
import pytest
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from pluralign.errors import ConfigError
from pluralign.training import SFTConfig, build_tokenizer, tiny_gpt_neox
from pluralign.training.checkpoints import (
    FINGERPRINT_FILE,
    fingerprint_differences,
    is_complete_checkpoint,
    last_complete_checkpoint,
    resume_checkpoint,
    run_fingerprint,
)
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


RECIPE = {"model": "tiny", "model_config": {"hidden_size": 32},
          "data": {"source": "synthetic", "seed": 0, "population": {"n_annotators": 12}},
          "training": {"learning_rate": 1e-3, "seed": 0, "objective": "mixdpo",
                       "output_dir": "runs/a", "logging_steps": 1, "save_steps": 2,
                       "report_to": "none", "max_steps": 6}}


def _changed(**training) -> dict:
    return {**RECIPE, "training": {**RECIPE["training"], **training}}


def test_fingerprint_keeps_what_resuming_depends_on():
    fp = run_fingerprint(RECIPE)
    assert fp == {"model": "tiny", "model_config.hidden_size": 32, "data.source": "synthetic",
                  "data.seed": 0, "data.population.n_annotators": 12,
                  "training.learning_rate": 1e-3, "training.seed": 0,
                  "training.objective": "mixdpo"}
    same = _changed(output_dir="elsewhere", logging_steps=50, report_to="tensorboard",
                    max_steps=100)
    assert run_fingerprint(same) == fp  # where, what is logged, and how long: not the run
    assert fingerprint_differences(fp, run_fingerprint(_changed(learning_rate=1e-5))) == {
        "training.learning_rate": (1e-3, 1e-5)}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 6-step SFT run whose checkpoints carry RECIPE's fingerprint."""
    out = tmp_path_factory.mktemp("finished") / "run"
    trainer = _sft(out)
    trainer.run_fingerprint = run_fingerprint(RECIPE)
    trainer.train()
    return out


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def test_resume_refuses_checkpoints_of_another_configuration(finished_run, tmp_path):
    """Issue 15 #1: a copied run folder resumed with another lr and seed used to resume the old
    run's checkpoint-6 and exit 0."""
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    assert resume_checkpoint(run, run_fingerprint(RECIPE)).name == "checkpoint-6"
    before = _snapshot(run)
    other = run_fingerprint(_changed(learning_rate=1e-5, seed=1))
    with pytest.raises(ConfigError, match=r"another configuration \(2 differing key\(s\): "
                                          r"training.learning_rate: 0.001 in the checkpoint, "
                                          r"1e-05 now; training.seed: 0 in the checkpoint, 1 now"):
        resume_checkpoint(run, other)
    trainer = _sft(run)
    trainer.run_fingerprint = other
    with pytest.raises(ConfigError, match="another configuration"):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 0
    assert _snapshot(run) == before  # refused before anything was written


def test_resume_with_nothing_to_resume_says_so(tmp_path):
    """Before: --resume with no checkpoint silently trained from scratch."""
    with pytest.raises(ConfigError, match="nothing to resume in .*missing"):
        resume_checkpoint(tmp_path / "missing", run_fingerprint(RECIPE))
    (tmp_path / "run" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"only incomplete ones: checkpoint-2\)"):
        resume_checkpoint(tmp_path / "run", None)


def test_resume_skips_checkpoints_left_half_written(finished_run, tmp_path):
    """Issue 15 #2: a plain save killed mid-way left an empty checkpoint-N or a 0-byte
    optimizer.pt, which transformers' get_last_checkpoint picks and resume then crashes on."""
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    (run / "checkpoint-8").mkdir()
    (run / "checkpoint-6" / "optimizer.pt").write_bytes(b"")
    assert Path(get_last_checkpoint(str(run))).name == "checkpoint-8"  # what plain resume uses
    assert not is_complete_checkpoint(run / "checkpoint-6")
    assert last_complete_checkpoint(run) == run / "checkpoint-4"
    assert resume_checkpoint(run, run_fingerprint(RECIPE)) == run / "checkpoint-4"


def test_checkpoint_without_fingerprint_is_not_resumed(finished_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(finished_run, run)
    for checkpoint in run.glob("checkpoint-*"):
        (checkpoint / FINGERPRINT_FILE).unlink()
    with pytest.raises(ConfigError, match=f"no readable {FINGERPRINT_FILE}"):
        resume_checkpoint(run, run_fingerprint(RECIPE))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_resume_restores_the_saved_lm_head_without_unexpected_keys(tmp_path, capfd, tied):
    """Issue 23 #8: transformers 5 saves GPT-NeoX's head as 'embed_out.weight' (a tied head not
    at all); resume printed "unexpected keys ... ['embed_out.weight']" and, for SFT, kept the
    fresh head. The resumed weights must equal the checkpoint's file, read here without
    transformers."""
    from safetensors.torch import load_file

    def build(out: Path) -> Trainer:
        trainer = _sft(out)
        if tied:
            trainer.model.config.tie_word_embeddings = True
            trainer.model.lm_head.weight = trainer.model.gpt_neox.embed_in.weight
        return trainer

    build(tmp_path / "run").train()
    checkpoint = tmp_path / "run" / "checkpoint-6"
    saved = load_file(checkpoint / "model.safetensors")
    head = saved.get("embed_out.weight", saved["gpt_neox.embed_in.weight"])
    resumed = build(tmp_path / "run")
    capfd.readouterr()
    resumed._load_from_checkpoint(str(checkpoint))
    assert "unexpected keys" not in capfd.readouterr().err.lower()
    state = resumed.model.state_dict()
    assert torch.equal(state["lm_head.weight"], head)
    assert tied == (resumed.model.lm_head.weight is resumed.model.gpt_neox.embed_in.weight)
    for name, tensor in saved.items():
        assert torch.equal(state["lm_head.weight" if name == "embed_out.weight" else name], tensor)


@pytest.mark.parametrize("name", ["rng_state.pth", "optimizer.pt", "scheduler.pt",
                                  "model.safetensors"])
@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_resume_from_a_damaged_checkpoint_file_is_one_line(tmp_path, name, damage):
    """Issue 23 #6: torch's weights_only refusal (a pickle that would run code) or a truncated
    file was a traceback; it is one ConfigError naming the checkpoint and the file."""
    _sft(tmp_path / "run").train()
    shutil.rmtree(tmp_path / "run" / "checkpoint-6")  # resume from 4: steps 5-6 still to run
    path = tmp_path / "run" / "checkpoint-4" / name
    if damage == "tampered":
        path.write_bytes(pickle.dumps(os.system))  # a global torch's weights_only refuses
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match=rf"cannot resume from .*checkpoint-4: its .*{name}"
                                          r".* does not load \(.*\); it was changed"):
        _sft(tmp_path / "run").train(resume_from_checkpoint=True)
