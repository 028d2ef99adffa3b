"""Several preference methods from one starting model: SFT once, then train each method from the
SFT model, as fresh LoRA adapters or a full copy (the loop the experiments share).

:class:`MethodsConfig` is the part of an experiment's config that says how: the recipe sections
``model:``, ``sft:`` and ``training:`` of ``pluralign sft`` / ``pluralign train`` (same keys, same
meaning) plus ``methods:``, each method's PreferenceConfig fields over ``training``::

    model: {name_or_path: tiny, tokenizer_vocab_size: 400}     # lora: {r: 16, ...} for adapters
    sft: {learning_rate: 3.0e-3, max_length: 64, max_prompt_length: 40}
    training: {learning_rate: 3.0e-4, max_length: 64, max_prompt_length: 40}
    methods:
      DPO: {objective: dpo, beta: 0.1}
      MixDPO-Gamma: {objective: mixdpo, strength: gamma}

:func:`train_methods` runs it on a training split and yields each trained policy in turn.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from pluralign.config import changed_fields, config_from_dict
from pluralign.errors import ConfigError
from pluralign.training.config import PreferenceConfig
from pluralign.training.recipe import ModelConfig, add_lora
from pluralign.training.sft import SFTConfig
from pluralign.validation import INDEX, check_fields

#: Set by the loop on every run it starts, whatever the sections say.
_RUN_FIELDS = ("output_dir", "save_strategy", "disable_tqdm")


@dataclass
class MethodsConfig:
    """Preference methods trained from one SFT model.

    Attributes:
        seed: seeds the tiny model's initialisation, SFT and every method's training (their
            ``seed``; a different ``sft.seed`` or ``training.seed`` is refused).
        model: the starting policy and its tokenizer, as in a train recipe; with ``lora`` every
            method trains fresh adapters on a copy of the SFT model, otherwise a full copy. The
            reference of every method is the SFT model (``ref_model`` is refused).
        sft: SFTConfig fields of the one SFT run on the training pairs' prompt + chosen; null
            skips SFT (an instruct model is its own reference).
        training: PreferenceConfig fields shared by every method (output_dir is set per run;
            nothing is checkpointed).
        methods: method name -> PreferenceConfig fields of that method, over ``training``
            (objective, strength, beta, ...).
        progress: show progress bars.
    """

    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig | None = field(default_factory=SFTConfig)
    training: PreferenceConfig = field(default_factory=PreferenceConfig)
    methods: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"DPO": {"objective": "dpo"}})
    progress: bool = True

    def __post_init__(self) -> None:
        where = type(self).__name__
        check_fields(self, {"seed": INDEX})
        if self.model.ref_model is not None:
            raise ConfigError(f"{where}: model.ref_model={self.model.ref_model!r}: every "
                              "method's reference is the SFT model; remove model.ref_model")
        check_seeds(where, self.seed, {f"{name}.seed": changed_fields(section).get("seed")
                                       for name, section in (("sft", self.sft),
                                                             ("training", self.training))
                                       if section is not None})
        if not isinstance(self.methods, Mapping) or not self.methods or not all(
                isinstance(m, Mapping) for m in self.methods.values()):
            raise ConfigError(f"{where}.methods={self.methods!r} is invalid; use a mapping "
                              "method name -> PreferenceConfig fields, e.g. {DPO: {objective: "
                              "dpo}}")
        self.methods = {str(name): dict(m) for name, m in self.methods.items()}
        for name in self.methods:  # every method's arguments are valid before any training
            self.method_args(name, "unused")

    def _run_values(self, output_dir: str | Path) -> dict[str, Any]:
        return {"output_dir": str(output_dir), "seed": self.seed, "save_strategy": "no",
                "disable_tqdm": not self.progress}

    def sft_args(self, output_dir: str | Path) -> SFTConfig:
        """The SFTConfig of the SFT run (``sft`` with the run's folder and seed)."""
        if self.sft is None:
            raise ConfigError(f"{type(self).__name__}.sft is null: there is no SFT run")
        return config_from_dict(SFTConfig, {**changed_fields(self.sft),
                                            **self._run_values(output_dir)}, "sft")

    def method_args(self, method: str, output_dir: str | Path) -> PreferenceConfig:
        """The PreferenceConfig of ``method``: ``training``, then the method's own fields, then
        the run's folder and seed."""
        own = self.methods[method]
        fixed = sorted(set(own) & {*_RUN_FIELDS, "seed"})
        if fixed:
            raise ConfigError(f"methods.{method}: {', '.join(fixed)} is set for every run by "
                              "the experiment; remove it")
        values = {**changed_fields(self.training), **own, **self._run_values(output_dir)}
        where = f"methods.{method}"
        try:
            return config_from_dict(PreferenceConfig, values, where)
        except ConfigError as exc:  # name the method whose fields (or training's) failed
            if str(exc).startswith(where):
                raise
            raise ConfigError(f"{where}: {exc}") from None


def check_seeds(where: str, seed: int, given: Mapping[str, int | None]) -> None:
    """Refuse a section's own seed (``given``: dotted name -> value, None where not set) that
    differs from ``seed``, the one seed of a run (it seeds every section)."""
    for name, value in given.items():
        if value is not None and value != seed:
            raise ConfigError(f"{where}: {name}={value!r} differs from seed={seed!r}, which "
                              f"seeds the whole run; set seed={value!r} instead and remove "
                              f"{name}")


def train_methods(config: MethodsConfig, train: datasets.Dataset, tokenizer: Any, model: Any,
                  run_dir: str | Path) -> Iterator[tuple[str, Any, Any, Any]]:
    """SFT ``model`` in place on ``train`` (skipped when ``config.sft`` is None), then train every
    method of ``config.methods`` from it, the SFT model as reference; yields ``(method, policy,
    sft_model, trainer)`` after each method's training. With ``config.model.lora`` each policy is
    a fresh set of adapters on a copy of the SFT model; otherwise a full copy is trained. Runs
    write below ``run_dir`` (``sft/``, one folder per method; no checkpoints)."""
    from pluralign.training.sft import run_sft
    from pluralign.training.trainer import PreferenceTrainer

    run_dir = Path(run_dir)
    if config.sft is not None:
        run_sft(model, tokenizer, train, config.sft_args(run_dir / "sft"))
    sft_model = model.eval()
    for method in config.methods:
        policy = copy.deepcopy(sft_model).requires_grad_(True)  # the reference is frozen in place
        if config.model.lora is not None:
            policy = add_lora(policy, config.model.lora)
        trainer = PreferenceTrainer(policy, ref_model=sft_model,
                                    args=config.method_args(method, run_dir / method),
                                    train_dataset=train, processing_class=tokenizer)
        trainer.train()
        yield method, policy, sft_model, trainer
