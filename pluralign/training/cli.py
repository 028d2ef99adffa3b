"""``pluralign sft CONFIG.yaml`` and ``pluralign train CONFIG.yaml``: recipe in, run folder out.

A recipe has these top-level keys (see ``configs/*.yaml``)::

    model: tiny                 # 'tiny' (GPT-NeoX from model_config) or a local HF model folder
    model_config: {}            # GPTNeoXConfig overrides for 'tiny' (hidden_size, ...)
    tokenizer: null             # local tokenizer folder; default: the model folder, or for 'tiny' a
    tokenizer_vocab_size: 512   #   byte-level BPE trained on the training texts
    ref_model: null             # local folder of the reference model (default: copy of the policy)
    lora: null                  # peft LoraConfig fields, e.g. {r: 8, lora_alpha: 16}; the reference
                                #   is then the base model with adapters disabled
    data: {source: synthetic, population: {...}, test_size: 0.1, seed: 0}
          # or {source: PATH, format: jsonl|csv|parquet|prism|..., options: {...}, test_size: 0.1}
    training: {...}             # PreferenceConfig (train) / SFTConfig (sft) fields

Overrides: ``--training.learning_rate=1e-5`` or ``--data.population.n_annotators=50``; a key
without a dot that is not a top-level key goes to ``training`` (``--objective=mixdpo``). Values are
parsed as YAML. The run folder (``training.output_dir``) receives ``config.yaml`` (the resolved
recipe), ``checkpoint-N/`` folders (with ``strength.safetensors``), the final model,
``trainer_state.json`` (with the per-step ``log_history``) and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import yaml

from pluralign.errors import ConfigError
from pluralign.io import atomic_path, parse_yaml, read_yaml_mapping, write_json, write_text

TOP_LEVEL_KEYS = (
    "model",
    "model_config",
    "tokenizer",
    "tokenizer_vocab_size",
    "ref_model",
    "lora",
    "data",
    "training",
)

_EPILOG = """Examples:
  pluralign {cmd} configs/tiny_cpu.yaml
  pluralign {cmd} configs/tiny_cpu.yaml --training.max_steps=20 --objective=mixdpo --strength=gamma
  pluralign {cmd} --resume configs/tiny_cpu.yaml          # continue from the last checkpoint
  accelerate launch --num_processes 2 -m pluralign.cli {cmd} configs/tiny_cpu.yaml   # GPUs
  torchrun --nproc_per_node 2 -m pluralign.cli {cmd} configs/tiny_cpu.yaml            # CPU, gloo
"""


def _add_arguments(parser: argparse.ArgumentParser, cmd: str) -> None:
    parser.epilog = _EPILOG.format(cmd=cmd)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="resume from the last complete checkpoint in the run folder",
    )
    parser.add_argument("config", help="YAML recipe (see configs/)")
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        help="--key=value overrides (dotted keys for nested fields)",
    )


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pluralign train``."""
    _add_arguments(parser, "train")


def add_sft_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pluralign sft``."""
    _add_arguments(parser, "sft")


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``recipe`` with ``--a.b=value`` overrides applied (values parsed as YAML)."""
    out = copy.deepcopy(recipe)
    for item in overrides:
        if not item.startswith("--") or "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form --key=value")
        key, raw = item[2:].split("=", 1)
        parts = key.split(".")
        if parts[0] not in TOP_LEVEL_KEYS:
            parts = ["training", *parts]
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {}) if isinstance(node.get(part), dict | None) else None
            if node is None:
                raise ConfigError(f"override {item!r}: {part!r} is not a mapping in the recipe")
        node[parts[-1]] = parse_yaml(raw)
    return out


def load_recipe(path: str | os.PathLike[str], overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a YAML recipe with ``parse_yaml`` (safe), apply overrides, check the top-level keys."""
    recipe = read_yaml_mapping(path, ", ".join(TOP_LEVEL_KEYS))
    recipe = apply_overrides(recipe, overrides or [])
    unknown = sorted(set(recipe) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(TOP_LEVEL_KEYS)} (trainer options go under 'training:')"
        )
    return recipe


def build_args(cls: type, fields: dict[str, Any]) -> Any:
    """Instantiate a TrainingArguments subclass, turning bad fields into a ConfigError."""
    try:
        return cls(**fields)
    except TypeError as exc:
        known = sorted(getattr(cls, "__dataclass_fields__", {}))
        bad = [k for k in fields if k not in known]
        raise ConfigError(
            f"training: unknown option(s) {', '.join(bad) or exc}; see "
            f"`{cls.__module__}.{cls.__name__}` for the valid fields"
        ) from None
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"training: {exc}") from None


def load_data(spec: dict[str, Any]) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Train and (optional) held-out split of the recipe's ``data`` section."""
    spec = dict(spec or {})
    source = spec.pop("source", None)
    test_size = spec.pop("test_size", 0.0)
    seed = spec.pop("seed", 0)
    if source is None:
        raise ConfigError("data.source is missing: use 'synthetic' or a path to preference data")
    if source == "synthetic":
        from pluralign.data.synthetic import PopulationConfig, make_population

        population = spec.pop("population", {}) or {}
        try:
            dataset = make_population(PopulationConfig(**population)).dataset
        except TypeError as exc:
            raise ConfigError(f"data.population: {exc}") from None
    else:
        from pluralign.data import load_preferences

        dataset = load_preferences(
            source, format=spec.pop("format", None), **(spec.pop("options", {}) or {})
        )
    if spec:
        raise ConfigError(f"data: unknown key(s) {', '.join(sorted(spec))}")
    if not test_size:
        return dataset, None
    split = dataset.train_test_split(test_size=test_size, seed=seed)
    return split["train"], split["test"]


def _texts(dataset: datasets.Dataset) -> list[str]:
    out = []
    for column in ("prompt", "chosen", "rejected"):
        for value in dataset[column] if column in dataset.column_names else []:
            out.append(
                value if isinstance(value, str) else "\n".join(m.get("content", "") for m in value)
            )
    return out


def build_model_and_tokenizer(recipe: dict[str, Any], train: datasets.Dataset, seed: int):
    """The policy and tokenizer named by the recipe ('tiny' builds both without any download)."""
    from pluralign.training.models import (
        build_tokenizer,
        load_causal_lm,
        load_tokenizer,
        tiny_gpt_neox,
    )

    name = recipe.get("model", "tiny")
    tok_path = recipe.get("tokenizer")
    if tok_path is not None:
        tokenizer = load_tokenizer(tok_path)
    elif name == "tiny":
        tokenizer = build_tokenizer(
            _texts(train), vocab_size=recipe.get("tokenizer_vocab_size", 512)
        )
    else:
        tokenizer = load_tokenizer(name)
    if name == "tiny":
        model = tiny_gpt_neox(len(tokenizer), seed=seed, **(recipe.get("model_config") or {}))
    else:
        model = load_causal_lm(name)
    lora = recipe.get("lora")
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    return model, tokenizer


def _last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None


def _finish(trainer: Any, recipe: dict[str, Any], metrics: dict[str, Any]) -> None:
    output_dir = trainer.args.output_dir
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        with atomic_path(os.path.join(output_dir, "trainer_state.json")) as tmp:
            trainer.state.save_to_json(str(tmp))
        write_json(os.path.join(output_dir, "metrics.json"), metrics)
        print(f"run folder: {output_dir}")


def _start(
    args: argparse.Namespace, config_cls: type
) -> tuple[dict, Any, datasets.Dataset, datasets.Dataset | None]:
    overrides = [o for o in args.overrides if o != "--resume"]
    resume = args.resume or len(overrides) != len(args.overrides)
    recipe = load_recipe(args.config, overrides)
    training = dict(recipe.get("training") or {})
    training.setdefault("output_dir", os.path.join("runs", Path(args.config).stem))
    training_args = build_args(config_cls, training)
    recipe["training"] = training
    train, test = load_data(recipe.get("data") or {})
    args.resume = resume
    return recipe, training_args, train, test


def run_train(args: argparse.Namespace) -> int:
    """``pluralign train``: preference optimisation (DPO / MixDPO / ...) from a YAML recipe."""
    from pluralign.training.config import PreferenceConfig
    from pluralign.training.models import load_causal_lm
    from pluralign.training.tokenization import check_pair_columns
    from pluralign.training.trainer import PreferenceTrainer

    recipe, training_args, train, test = _start(args, PreferenceConfig)
    check_pair_columns(train, "train")
    if test is not None:
        check_pair_columns(test, "eval")
    model, tokenizer = build_model_and_tokenizer(recipe, train, training_args.seed)
    ref_model = load_causal_lm(recipe["ref_model"]) if recipe.get("ref_model") else None
    trainer = PreferenceTrainer(
        model,
        ref_model=ref_model,
        args=training_args,
        train_dataset=train,
        eval_dataset=test,
        processing_class=tokenizer,
    )
    return _train_and_finish(trainer, recipe, args.resume, test is not None,
                             lambda: {"strength": trainer.objective.metrics()})


def run_sft(args: argparse.Namespace) -> int:
    """``pluralign sft``: supervised fine-tuning on prompt + chosen from a YAML recipe."""
    from pluralign.training.sft import SFTConfig, build_sft_trainer
    from pluralign.training.tokenization import check_pair_columns

    recipe, training_args, train, test = _start(args, SFTConfig)
    check_pair_columns(train, "train", required=("prompt", "chosen"))
    model, tokenizer = build_model_and_tokenizer(recipe, train, training_args.seed)
    trainer = build_sft_trainer(model, tokenizer, train, training_args, eval_dataset=test)
    return _train_and_finish(trainer, recipe, args.resume, test is not None)


def _train_and_finish(trainer: Any, recipe: dict[str, Any], resume: bool, evaluate: bool,
                      extra_metrics: Callable[[], dict[str, Any]] = dict) -> int:
    """The run-folder sequence shared by ``sft`` and ``train``: config.yaml first (process 0),
    resume from the last complete checkpoint if asked, train, evaluate, write metrics."""
    output_dir = trainer.args.output_dir
    if trainer.is_world_process_zero():
        write_text(os.path.join(output_dir, "config.yaml"), yaml.safe_dump(recipe, sort_keys=False))
    checkpoint = _last_checkpoint(output_dir) if resume else None
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics: dict[str, Any] = {"train": result.metrics, **extra_metrics()}
    if evaluate:
        metrics["eval"] = trainer.evaluate()
    _finish(trainer, recipe, metrics)
    return 0
