"""`pluralign sft` / `pluralign train`: recipes, overrides, errors before training, run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pluralign.cli import main
from pluralign.config import apply_overrides, build_config
from pluralign.errors import ConfigError
from pluralign.training import PreferenceConfig, SFTConfig
from pluralign.training.recipe import SFTRecipe, TrainRecipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for pattern in ("tiny_cpu*.yaml", "prism_*.yaml", "community_alignment_*.yaml",
                                   "hh_*.yaml", "sft_*.yaml") for p in CONFIGS.glob(pattern))

TINY = {
    "model": {"name_or_path": "tiny",
              "config": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 64},
              "tokenizer_vocab_size": 300},
    "data": {"source": "synthetic", "test_size": 0.25, "seed": 0,
             "population": {"n_annotators": 6, "pairs_per_annotator": 6, "n_prompts": 10,
                            "text_style": "compact", "seed": 0}},
    "training": {"objective": "mixdpo", "strength": "gamma", "learning_rate": 1e-3,
                 "optim": "adamw_torch", "per_device_train_batch_size": 9, "max_steps": 2,
                 "save_steps": 1, "logging_steps": 1, "use_cpu": True, "report_to": "none",
                 "disable_tqdm": True, "max_length": 64, "max_prompt_length": 32},
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path):
    sft = path.name.startswith(("sft_", "tiny_cpu_sft"))
    recipe = build_config(SFTRecipe if sft else TrainRecipe, path,
                          ["training.bf16=false", "training.report_to=none",
                           "training.use_cpu=true"])
    cls = SFTConfig if sft else PreferenceConfig
    args = recipe.training
    assert isinstance(args, cls)
    if cls is PreferenceConfig and "tiny" not in path.name:  # the paper's Appendix E settings
        paper = (args.learning_rate, args.max_grad_norm, args.max_length, args.max_prompt_length)
        assert paper == (5e-7, 1.0, 128, 64)
        assert args.optim == "rmsprop" and args.reference_dtype == "float32"
        assert args.strength_learning_rate == 1e-4


def test_dotted_overrides_reach_sections():
    recipe = apply_overrides(TINY, ["training.objective=dpo", "data.population.n_annotators=3",
                                    "training.max_steps=7", "model.config.hidden_size=16"])
    assert recipe["training"]["objective"] == "dpo" and recipe["training"]["max_steps"] == 7
    assert recipe["data"]["population"]["n_annotators"] == 3
    assert recipe["model"]["config"]["hidden_size"] == 16
    assert TINY["training"]["objective"] == "mixdpo"  # the input is not modified
    # Scientific notation without a dot is a number (YAML 1.1 would keep the string "3e-3").
    lr = apply_overrides(TINY, ["training.learning_rate=3e-3"])["training"]["learning_rate"]
    assert lr == 0.003
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(TINY, ["--objective=dpo"])


@pytest.mark.parametrize("override, message", [
    ("training.objective=ppo", "objective='ppo' is unknown"),
    ("training.learning_rate=-0.1", "learning_rate=-0.1 is invalid; use a finite number >= 0"),
    ("training.strength_shape=-2", "strength_shape=-2 is invalid"),
    ("training.strength_mu=-2", "does not use strength_mu"),
    ("training.not_an_option=1", "unknown option.*not_an_option"),
])
def test_bad_recipes_exit_2_with_the_fix_before_training(tmp_path, capsys, override, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--output-dir", str(out), override]) == 2
    assert __import__("re").search(message, capsys.readouterr().err)
    assert not out.exists()


def test_dataset_missing_chosen_exits_2_before_the_model_is_built(tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"p{i}", "rejected": "r"}) for i in range(4)))
    recipe = {**TINY, "data": {"source": str(data), "format": "jsonl"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(tmp_path / "r.yaml"),
                 "--output-dir", str(tmp_path / "run")]) == 2
    assert "chosen" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_sft_then_train_writes_complete_run_folders(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    sft, run = tmp_path / "sft", tmp_path / "train"
    assert main(["sft", "--config", str(recipe), "--output-dir", str(sft)]) == 2  # no objective
    assert "unknown option(s) objective, strength" in capsys.readouterr().err
    sft_recipe = {**TINY, "training": {k: v for k, v in TINY["training"].items()
                                       if k not in ("objective", "strength")}}
    recipe.write_text(yaml.safe_dump(sft_recipe))
    assert main(["sft", "--config", str(recipe), "--output-dir", str(sft)]) == 0
    recipe.write_text(yaml.safe_dump(TINY))
    assert main(["train", "--config", str(recipe), "--output-dir", str(run),
                 f"model.name_or_path={sft}", f"model.tokenizer={sft}"]) == 0
    for name in ("config.yaml", "trainer_state.json", "metrics.json", "model.safetensors",
                 "strength.safetensors", "checkpoint-1", "checkpoint-2"):
        assert (run / name).exists(), name
    assert not (run / ".staging").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["name_or_path"] == str(sft)
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "loss" in h]
    assert len(steps) == 2
    for key in ("loss", "margin_mean", "accuracy", "beta_mean", "beta_var", "strength/shape",
                "strength/rate"):
        assert key in steps[0], key
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"train", "eval", "strength"} <= metrics.keys()
