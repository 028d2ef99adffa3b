"""Recipes of ``pluralign sft`` and ``pluralign train``: model, data and trainer in one config.

A recipe (see ``configs/*.yaml``) has three sections, each a documented dataclass::

    model: {name_or_path: tiny, config: {hidden_size: 64}, tokenizer_vocab_size: 512}
    # or just   model: runs/sft_prism_llama1b
    data: {source: synthetic, population: {...}, test_size: 0.1, seed: 0}
    #  or {source: PATH, format: jsonl|csv|parquet|prism|..., options: {...}, test_size: 0.1}
    training: {...}             # PreferenceConfig (train) / SFTConfig (sft) fields

:func:`run_recipe` writes the run folder (``training.output_dir``): ``config.yaml`` (the recipe as
read, overrides applied), ``checkpoint-N/`` folders (with ``strength.safetensors``), the final
model, ``trainer_state.json`` (with the per-step ``log_history``) and ``metrics.json`` (its
``warnings`` flag a learned strength distribution that ran away: :func:`strength_warnings`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from pluralign.data.config import DataConfig, load_data, require_data
from pluralign.errors import ConfigError
from pluralign.io import atomic_path
from pluralign.runs import plain, run_folder, write_config, write_metrics
from pluralign.training.config import PreferenceConfig
from pluralign.training.sft import SFTConfig
from pluralign.validation import check_number


@dataclass
class ModelConfig:
    """The policy and its tokenizer (``model: PATH`` is short for ``{name_or_path: PATH}``).

    Attributes:
        name_or_path: 'tiny' (a GPT-NeoX built from ``config``, no download), a registered name
            (``smollm2-135m-instruct``) or a local Hugging Face model folder.
        config: GPTNeoXConfig overrides for 'tiny' (hidden_size, num_hidden_layers, ...).
        tokenizer: local tokenizer folder; default: the model folder, or for 'tiny' a byte-level
            BPE trained on the training texts.
        tokenizer_vocab_size: vocabulary size of that BPE ('tiny' only).
        ref_model: local folder of the reference model (default: a frozen copy of the policy).
        lora: peft ``LoraConfig`` fields, e.g. {r: 8, lora_alpha: 16}; the reference is then
            the base model with adapters disabled.
    """

    SHORTHAND = "name_or_path"

    name_or_path: str = "tiny"
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    tokenizer_vocab_size: int = 512
    ref_model: str | None = None
    lora: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        from pluralign.training.models import BYTE_VOCAB, tiny_model_overrides

        for name in ("name_or_path", "tokenizer", "ref_model"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ConfigError(f"model.{name}={value!r} is invalid; use a model name or a "
                                  "local folder")
        # checked even where unused (a tiny recipe pointed at a trained model keeps its section)
        self.config = tiny_model_overrides(self.config, "model.config")
        check_number(self.tokenizer_vocab_size, "model.tokenizer_vocab_size",
                     minimum=BYTE_VOCAB, integer=True)
        if self.lora is not None:
            self.lora = check_lora(self.lora)


def check_lora(lora: object, where: str = "model.lora") -> dict[str, Any]:
    """``lora`` checked against peft's ``LoraConfig`` fields (unknown keys named after
    ``where``)."""
    import dataclasses

    from peft import LoraConfig

    if not isinstance(lora, Mapping):
        raise ConfigError(f"{where}={lora!r} is invalid; use a mapping of peft LoraConfig "
                          "fields, e.g. {r: 8, lora_alpha: 16}")
    valid = {f.name for f in dataclasses.fields(LoraConfig) if f.init} - {"task_type"}
    unknown = sorted(str(k) for k in lora if k not in valid)
    if unknown:
        raise ConfigError(f"{where}: unknown LoraConfig key(s) {', '.join(unknown)}; valid "
                          "keys include r, lora_alpha, lora_dropout, target_modules")
    return dict(lora)


@dataclass
class _Recipe:
    """Sections every recipe has.

    Attributes:
        model: the model to train and its tokenizer.
        data: the preference pairs and the held-out split.
        resume: continue from the last complete checkpoint in the run folder; refused when that
            checkpoint was written by another configuration (anything but the output folder,
            logging, saving, evaluation cadence and the step budget) or when there is none.
        overwrite: let a fresh run (resume=false) replace a non-empty run folder as a whole (it
            trains into a hidden sibling folder swapped in at the end, so no file of the old run
            survives and a kill leaves the old run); without it such a folder is refused.
    """

    OUTPUT_DIR = "training.output_dir"

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(source="synthetic"))
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("resume", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}={getattr(self, name)!r} is invalid; use true or false")
        require_data(self.data, type(self).__name__.removesuffix("Recipe").lower(), whole=False)
        if self.resume and self.overwrite:
            raise ConfigError("resume=true and overwrite=true contradict each other: resume "
                              "continues the run in output_dir, overwrite replaces it; pick one")


@dataclass
class TrainRecipe(_Recipe):
    """``pluralign train``: preference optimisation (DPO, MixDPO, corrected DPO, agreement).

    Attributes:
        training: PreferenceConfig fields (the objective and its settings among them).
    """

    training: PreferenceConfig = field(default_factory=PreferenceConfig)


@dataclass
class SFTRecipe(_Recipe):
    """``pluralign sft``: supervised fine-tuning on prompt + chosen.

    Attributes:
        training: SFTConfig fields.
    """

    training: SFTConfig = field(default_factory=SFTConfig)


def pair_texts(dataset: datasets.Dataset) -> list[str]:
    """The prompt, chosen and rejected texts of ``dataset``, column by column (chat messages
    joined), e.g. to train a tiny model's BPE tokenizer on."""
    out = []
    for column in ("prompt", "chosen", "rejected"):
        for value in dataset[column] if column in dataset.column_names else []:
            out.append(
                value if isinstance(value, str) else "\n".join(m.get("content", "") for m in value)
            )
    return out


def build_tokenizer_for(spec: ModelConfig, texts: Callable[[], list[str]]) -> Any:
    """The tokenizer ``spec`` names: ``spec.tokenizer``, the model's own, or for 'tiny' a BPE
    trained on ``texts()`` (called only then)."""
    from pluralign.training.loading import load_tokenizer
    from pluralign.training.models import build_tokenizer

    if spec.tokenizer is not None:
        return load_tokenizer(spec.tokenizer)
    if spec.name_or_path == "tiny":
        return build_tokenizer(texts(), vocab_size=spec.tokenizer_vocab_size)
    return load_tokenizer(spec.name_or_path)


def build_base_model(spec: ModelConfig, tokenizer: Any, seed: int) -> Any:
    """The model ``spec`` names, without adapters: a seeded tiny GPT-NeoX sized by
    ``spec.config`` for 'tiny', else the pretrained / local model."""
    from pluralign.training.loading import load_causal_lm
    from pluralign.training.models import tiny_gpt_neox

    if spec.name_or_path == "tiny":
        return tiny_gpt_neox(len(tokenizer), seed=seed, **spec.config)
    return load_causal_lm(spec.name_or_path)


def build_model_and_tokenizer(spec: ModelConfig, train: datasets.Dataset, seed: int):
    """The policy and tokenizer ``spec`` names ('tiny' builds both without any download)."""
    tokenizer = build_tokenizer_for(spec, lambda: pair_texts(train))
    model = build_base_model(spec, tokenizer, seed)
    if spec.lora:
        model = add_lora(model, spec.lora)
    return model, tokenizer


def add_lora(model: Any, lora: Mapping[str, Any]) -> Any:
    """``model`` wrapped in peft LoRA adapters (``lora``: LoraConfig fields); its base weights are
    frozen in place and the adapters disabled give the base model back."""
    from peft import LoraConfig, get_peft_model

    try:
        return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    except (ValueError, TypeError) as exc:  # peft's bad r, target_modules, ... (one line each)
        raise ConfigError(f"lora={dict(lora)!r} does not fit this model: {exc}; check "
                          "lora.r (>= 1) and lora.target_modules (module names of the model)"
                          ) from None


def run_recipe(recipe: TrainRecipe | SFTRecipe, recorded: Mapping[str, Any]) -> dict[str, Any]:
    """Train as ``recipe`` says and write its run folder; ``recorded`` is the recipe as read
    (saved as ``config.yaml``). Returns the metrics written to ``metrics.json``.

    Before anything is written, ``resume`` refuses a run folder whose last complete checkpoint
    another configuration wrote, or that has none, and a fresh run goes through the run-folder
    guard (:func:`~pluralign.runs.run_folder`): a non-empty folder is refused unless
    ``overwrite``, which trains into a staging folder swapped in whole at the end.
    """
    from pluralign.training.checkpoints import resume_checkpoint, run_fingerprint

    fingerprint = run_fingerprint(plain(recipe))
    output_dir = recipe.training.output_dir
    checkpoint = str(resume_checkpoint(output_dir, fingerprint)) if recipe.resume else None
    primary = int(os.environ.get("RANK", "0")) == 0  # torchrun's global rank
    with run_folder(output_dir, recipe.overwrite, resume=recipe.resume, primary=primary,
                    can_resume=True) as out:
        if out != Path(output_dir):
            recipe.training.output_dir = os.fspath(out)
        return _train(recipe, recorded, fingerprint, checkpoint)


def _train(recipe: TrainRecipe | SFTRecipe, recorded: Mapping[str, Any],
           fingerprint: dict[str, Any], checkpoint: str | None) -> dict[str, Any]:
    """:func:`run_recipe` once the run folder is settled (``recipe.training.output_dir``)."""
    from pluralign.training.tokenization import check_pair_columns

    train, test = load_data(recipe.data)
    args = recipe.training
    extra: Callable[[], dict[str, Any]] = dict
    if isinstance(recipe, SFTRecipe):
        from pluralign.training.sft import build_sft_trainer

        check_pair_columns(train, "train", required=("prompt", "chosen"))
        model, tokenizer = build_model_and_tokenizer(recipe.model, train, args.seed)
        trainer = build_sft_trainer(model, tokenizer, train, args, eval_dataset=test,
                                    run_fingerprint=fingerprint)
    else:
        from pluralign.training.loading import load_causal_lm
        from pluralign.training.trainer import PreferenceTrainer

        check_pair_columns(train, "train")
        if test is not None:
            check_pair_columns(test, "eval")
        model, tokenizer = build_model_and_tokenizer(recipe.model, train, args.seed)
        ref = load_causal_lm(recipe.model.ref_model) if recipe.model.ref_model else None
        trainer = PreferenceTrainer(model, ref_model=ref, args=args, train_dataset=train,
                                    eval_dataset=test, processing_class=tokenizer)
        trainer.run_fingerprint = fingerprint

        def extra() -> dict[str, Any]:
            return {"strength": trainer.objective.metrics()}

    output_dir = args.output_dir
    trainer.accelerator.wait_for_everyone()  # every rank has checked the folder before it changes
    if trainer.is_world_process_zero():
        write_config(output_dir, recorded)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics: dict[str, Any] = {"train": result.metrics, **extra()}
    flags = strength_warnings(metrics.get("strength", {}))
    if flags:
        metrics["warnings"] = flags
        for line in flags:
            print(f"warning: {line}", file=sys.stderr)
    if test is not None:
        metrics["eval"] = trainer.evaluate()
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        with atomic_path(os.path.join(output_dir, "trainer_state.json")) as tmp:
            trainer.state.save_to_json(str(tmp))
        write_metrics(output_dir, metrics)
    _leave_process_group(trainer)
    return metrics


#: Learned CV² = Var β / (E β)² above which a run's strength distribution is flagged: the
#: paper's initial distributions have CV² ≈ 0.43 (LogNormal σ = 0.6); 100 is LogNormal σ ≈ 2.1.
MAX_STRENGTH_CV2 = 100.0


def strength_warnings(strength: Mapping[str, Any]) -> list[str]:
    """Lines flagging a learned strength distribution that has run away (``beta_mean`` /
    ``beta_var`` of :meth:`Objective.metrics` not finite, or CV² above :data:`MAX_STRENGTH_CV2`):
    typically margins far from unit scale (e.g. ±1e4), where β is not identified. Empty when
    the objective logs no strength or the fit is in range."""
    mean, var = strength.get("beta_mean"), strength.get("beta_var")
    if mean is None or var is None:
        return []
    if not (math.isfinite(mean) and math.isfinite(var)) or mean <= 0:
        return [f"learned strength E[β] = {mean:.3g}, Var[β] = {var:.3g} is not a distribution "
                "any more; check the margins' scale and strength_learning_rate"]
    cv2 = var / mean**2
    if cv2 > MAX_STRENGTH_CV2:
        return [f"learned strength has run away: E[β] = {mean:.3g}, Var[β] = {var:.3g} "
                f"(CV² {cv2:.3g} > {MAX_STRENGTH_CV2:g}); its spread is not identified, "
                "typically because the margins are far from unit scale: check them (pluralign "
                "diagnose) and lower strength_learning_rate"]
    return []


def _leave_process_group(trainer: Any) -> None:
    """Every rank leaves together, then the process group is torn down while nothing holds it.

    A gloo worker thread releases the tensors of a finished collective only once it holds the
    GIL. A rank that exits with the group alive can abort in that release during interpreter
    shutdown (`terminate called without an active exception`, seen in CI), and one that drops
    its last reference to the group (DDP's reducer) while the release is pending deadlocks: the
    main thread joins the worker under the GIL (py-spy: `~ProcessGroupGloo` → `thread::join`
    against `~AsyncBarrierWork` → `gil_scoped_acquire`). So after the barrier the GIL is handed
    over for a moment, and the group is destroyed before the trainer is.
    """
    accelerator = trainer.accelerator
    if accelerator.num_processes == 1:
        return
    accelerator.wait_for_everyone()
    time.sleep(0.5)  # lets the worker threads release the barrier's tensors (see above)
    accelerator.end_training()
