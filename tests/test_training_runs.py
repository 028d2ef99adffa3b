"""End-to-end runs: 2-process DDP equals 1 process, kill + resume, atomic checkpoints."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from pluralign.cli import main
from pluralign.training import PreferenceConfig, PreferenceTrainer, build_tokenizer, tiny_gpt_neox

RECIPE = {
    "model": {"name_or_path": "tiny",
              "config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                         "intermediate_size": 64},
              "tokenizer_vocab_size": 300},
    "data": {"source": "synthetic", "seed": 0,
             "population": {"n_annotators": 12, "pairs_per_annotator": 8, "n_prompts": 20,
                            "text_style": "compact", "seed": 0}},
    "training": {"objective": "mixdpo", "strength": "gamma", "strength_learning_rate": 1e-2,
                 "learning_rate": 1e-3, "optim": "adamw_torch", "max_steps": 3,
                 "logging_steps": 1, "save_strategy": "no", "seed": 0, "use_cpu": True,
                 "report_to": "none", "disable_tqdm": True, "max_length": 64,
                 "max_prompt_length": 32},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _history(run: Path) -> list[dict]:
    state = json.loads((run / "trainer_state.json").read_text())
    return [h for h in state["log_history"] if "loss" in h]


def _launcher(name: str) -> list[str]:
    """Two gloo processes on CPU, started by `accelerate launch` (what the docs tell users to run;
    `--multi_gpu` picks its torch.distributed launcher, which falls back to gloo without CUDA)
    or by plain torchrun."""
    port = str(_free_port())
    if name == "accelerate":
        return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--main_process_port", port, "-m", "pluralign.cli"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_port", port, "-m", "pluralign.cli"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_two_process_ddp_reproduces_single_process_loss_curve(tmp_path, launcher):
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(RECIPE))
    single, double = tmp_path / "single", tmp_path / "ddp"
    assert main(["train", "--config", str(recipe_path), "--output-dir", str(single),
                 "training.per_device_train_batch_size=8"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [*_launcher(launcher), "train", "--config", str(recipe_path), "--output-dir",
           str(double), "training.per_device_train_batch_size=4"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    one, two = _history(single), _history(double)
    assert [h["step"] for h in one] == [h["step"] for h in two] == [1, 2, 3]
    # Same global batch of 8 pairs per step; only float summation order differs (gloo all-reduce).
    for a, b in zip(one, two, strict=True):
        # accuracy counts margins > 0, and at step 1 every margin is 0 up to rounding: not compared.
        for key in ("loss", "margin_mean", "strength/shape", "strength/rate"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a, b)
    assert one[-1]["strength/rate"] != pytest.approx(16.7, abs=1e-4)  # the strength did move


REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize(("launcher", "overrides", "message"), [
    # The shipped FSDP config on CPU: accelerate would quietly run DDP instead.
    ([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
      str(REPO / "configs/accelerate/fsdp.yaml"), "--num_processes", "2",
      "--mixed_precision", "no"], [], "FSDP was requested but accelerate set this launch up as"),
    # Without use_cpu on a machine with no GPU: two processes that would each train alone.
    ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"],
     ["training.use_cpu=false"], "2 processes were launched but accelerate found no device"),
])
def test_launches_that_would_train_something_else_are_refused(tmp_path, launcher, overrides,
                                                              message):
    if torch.cuda.is_available():
        pytest.skip("both launches are valid with GPUs")
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(RECIPE))
    port = "--main_process_port" if "accelerate" in launcher[2] else "--master_port"
    cmd = [*launcher, port, str(_free_port()), "-m", "pluralign.cli", "train", "--config",
           str(recipe_path), "--output-dir", str(tmp_path / "run"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert f"pluralign train: error: {message}" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "run" / "trainer_state.json").exists()


# ------------------------------------------------------------------ kill and resume
PAIRS = [{"prompt": f"Question {i}: which is kinder?",
          "chosen": " Helping a friend." if i % 2 else " Sharing the meal.",
          "rejected": " Ignoring them." if i % 3 else " Taking the last seat."} for i in range(48)]


class _KillAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def _trainer(out: Path, tokenizer, **kw) -> PreferenceTrainer:
    import datasets

    args = PreferenceConfig(
        output_dir=str(out), objective="mixdpo", strength="lognormal", strength_learning_rate=1e-2,
        learning_rate=1e-3, optim="adamw_torch", per_device_train_batch_size=8, max_steps=8,
        save_steps=3, logging_steps=1, seed=0, use_cpu=True, report_to="none", disable_tqdm=True,
        **kw)
    model = tiny_gpt_neox(len(tokenizer), seed=0, hidden_size=32, intermediate_size=64)
    return PreferenceTrainer(model, args=args, train_dataset=datasets.Dataset.from_list(PAIRS),
                             processing_class=tokenizer)


def _files(checkpoint: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(checkpoint.iterdir())
            if p.name not in ("trainer_state.json", "training_args.bin")}


def _optimizer_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "optimizer.pt", weights_only=True)


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path):
    tokenizer = build_tokenizer([p["prompt"] + p["chosen"] + p["rejected"] for p in PAIRS], 300)
    full = _trainer(tmp_path / "full", tokenizer)
    full.train()

    killed = _trainer(tmp_path / "killed", tokenizer)
    killed.add_callback(_KillAt(5))
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    last = Path(get_last_checkpoint(str(tmp_path / "killed")))
    assert last.name == "checkpoint-3"
    assert not (tmp_path / "killed" / "checkpoint-6").exists()
    assert _files(last) == _files(tmp_path / "full" / "checkpoint-3")  # nothing written is corrupt

    resumed = _trainer(tmp_path / "killed", tokenizer)
    resumed.train(resume_from_checkpoint=str(last))
    assert resumed.state.global_step == full.state.global_step == 8
    for name in ("checkpoint-6", "checkpoint-8"):
        a, b = tmp_path / "full" / name, tmp_path / "killed" / name
        strength_a = load_file(a / "strength.safetensors")
        strength_b = load_file(b / "strength.safetensors")
        assert strength_a.keys() == strength_b.keys() and strength_a
        for key in strength_a:
            torch.testing.assert_close(strength_b[key], strength_a[key], rtol=0, atol=1e-6)
        opt_a, opt_b = _optimizer_state(a), _optimizer_state(b)
        assert len(opt_a["param_groups"]) == len(opt_b["param_groups"]) == 3
        for pid, state in opt_a["state"].items():
            for key, value in state.items():
                torch.testing.assert_close(opt_b["state"][pid][key], value, rtol=0, atol=1e-6)
        weights_a = load_file(a / "model.safetensors")
        weights_b = load_file(b / "model.safetensors")
        for key in weights_a:
            torch.testing.assert_close(weights_b[key], weights_a[key], rtol=0, atol=1e-6)
    losses = lambda t: [h["loss"] for h in t.state.log_history if "loss" in h]  # noqa: E731
    assert losses(resumed)[-2:] == pytest.approx(losses(full)[-2:], abs=1e-6)


def test_crash_while_writing_a_checkpoint_leaves_no_partial_checkpoint(tmp_path, monkeypatch):
    tokenizer = build_tokenizer([p["prompt"] + p["chosen"] + p["rejected"] for p in PAIRS], 300)
    trainer = _trainer(tmp_path / "run", tokenizer)
    original = PreferenceTrainer._save_rng_state
    calls = {"n": 0}

    def crash_on_second_save(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:  # checkpoint-6: model and optimizer already written, rng state not yet
            raise KeyboardInterrupt
        return original(self, output_dir)

    monkeypatch.setattr(PreferenceTrainer, "_save_rng_state", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-3"]
    assert Path(get_last_checkpoint(str(tmp_path / "run"))).name == "checkpoint-3"
