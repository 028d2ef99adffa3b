"""``PreferenceConfig``: every knob of a preference-optimisation run, with the MixDPO paper's
defaults.

It is a :class:`transformers.TrainingArguments`, so everything the Hugging Face ``Trainer``
understands (``output_dir``, ``seed``, ``save_steps``, ``report_to``, ``bf16``, ``fsdp``, ...) is
available as well. Defaults follow [MixDPO, §4.3; App. E]: RMSprop with policy learning rate
5e-7, gradient clipping at 1.0, batch 64 (eval 32), no gradient accumulation, one epoch, max length
128 with max prompt length 64 (the paper's float32 reference model is ``reference_dtype: float32``,
set by the paper recipes; the default follows the policy's precision), DPO β = 0.1,
LogNormal(μ=−2.3, σ=0.6) and Gamma(k=2.0, λ=16.7) initial strength distributions (both with
E[β] ≈ 0.12) and a strength learning rate of 1e-4 (the paper's recommended value, §5.2 and
Appendix F). Invalid values raise :class:`~pluralign.errors.ConfigError` at construction,
before any model is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Optional

from transformers import TrainingArguments

from pluralign.errors import ConfigError
from pluralign.objectives import (
    Objective,
    ObjectiveSpec,
    objective_settings,
    resolve_objective,
)
from pluralign.validation import (
    COUNT,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    check_fields,
    check_lengths,
)

REFERENCE_DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_steps(args: TrainingArguments) -> None:
    """``max_steps`` is -1 (train ``num_train_epochs``) or a positive count (Transformers would
    train one step at 0); ``save_steps``/``eval_steps``/``logging_steps`` are positive (a count,
    or a fraction of the run below 1) where set. :class:`ConfigError` naming the field."""
    max_steps = args.max_steps
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or (
            max_steps < 1 and max_steps != -1):
        raise ConfigError(f"max_steps={max_steps!r} is invalid; use a whole number >= 1, or -1 "
                          "to train num_train_epochs")
    for name in ("save_steps", "eval_steps", "logging_steps"):
        value = getattr(args, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value > 0):
            raise ConfigError(f"{name}={value!r} is invalid; use a number of steps >= 1 (or a "
                              "fraction of the run in (0, 1))")


def _objective_fields() -> type:
    """A dataclass with one optional field per objective setting, named and documented as the
    objectives declare it (:func:`pluralign.objectives.objective_settings`); ``None`` means "not
    set", so the objective's own default applies and an unused setting can be told apart."""
    specs = []
    for name, (type_, default, help_text, users) in objective_settings().items():
        note = f" [objective: {', '.join(users)}; default: {default}]"
        specs.append((name, Optional[type_],  # noqa: UP045 - HfArgumentParser reads Optional
                      field(default=None, metadata={"help": help_text + note})))
    return make_dataclass("ObjectiveSettings", specs)


@dataclass
class PreferenceConfig(TrainingArguments, _objective_fields()):
    """Training arguments for :class:`~pluralign.training.PreferenceTrainer` (paper defaults)."""

    objective: str = field(
        default="dpo",
        metadata={
            "help": "Loss on the policy's reward margins: 'dpo' (fixed beta), 'mixdpo' (beta "
            "drawn from the `strength` distribution, [MixDPO, Eq. 3]), 'corrected_dpo' "
            "(first-order-corrected DPO, needs a `pair_variance` column), 'agreement' "
            "(needs an `agreement` column), 'group_dpo' or 'group_mixdpo' (group-robust DPO / "
            "MixDPO, Ramesh et al. 2024; groups from `group_by`). Its settings are the fields "
            "marked [objective]."
        },
    )
    strength_learning_rate: float = field(
        default=1e-4,
        metadata={
            "help": "Learning rate of the strength parameters, in their own optimizer group "
            "(paper: 1e-4)."
        },
    )
    max_length: int = field(
        default=128, metadata={"help": "Maximum prompt + completion length in tokens (paper: 128)."}
    )
    max_prompt_length: int = field(
        default=64,
        metadata={
            "help": "Maximum prompt length in tokens; longer prompts keep their end (paper: 64)."
        },
    )
    precompute_ref_log_probs: bool = field(
        default=False,
        metadata={
            "help": "Compute the reference log-probs once before training and drop the "
            "reference model, instead of a reference forward pass at every step."
        },
    )
    precompute_ref_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Pairs per forward call of the precompute pass "
            "(precompute_ref_log_probs); default 2 × per_device_eval_batch_size. The pass "
            "scores the pairs longest first in packed batches (same log-probs as one pair at "
            "a time, up to float summation order), so a larger batch means fewer, fuller calls."
        },
    )
    reference_dtype: str = field(
        default="auto",
        metadata={
            "help": "Precision of the reference model. 'auto' (default): the policy's, i.e. the "
            "policy's weight dtype under the same bf16/fp16 mixed precision, so the reference "
            "forward costs what the policy's does and the margins start at exactly 0; it is the "
            "fast choice wherever bf16 matmuls are fast (GPUs, CPUs with AVX512-BF16/AMX; "
            "bench/trainer.py). 'float32': weights in float32, scored outside autocast (the "
            "paper's setting, App. E; the paper recipes set it); 'bfloat16'/'float16': weights "
            "cast to that dtype."
        },
    )
    share_prompt: bool = field(
        default=True,
        metadata={
            "help": "Run each pair's prompt through the model once: prompt + chosen + rejected "
            "in one row, the rejected completion masked off the chosen one (log-probs equal "
            "the separate rows'; needs eager or sdpa attention, not flash). Default on: fewer "
            "tokens, faster (bench/packing.py)."
        },
    )
    padding_free: bool = field(
        default=True,
        metadata={
            "help": "Pack several sequences per row with reset position ids instead of padding "
            "every row (transformers' flattening convention, as TRL's padding_free); exact. "
            "Default on: faster (bench/packing.py)."
        },
    )
    pad_to_multiple_of: int | None = field(
        default=None,
        metadata={"help": "Pad batch length to a multiple of this (e.g. 8 on tensor-core GPUs)."},
    )

    # TrainingArguments fields whose defaults the paper sets differently (Appendix E).
    learning_rate: float = field(
        default=5e-7, metadata={"help": "Policy learning rate (paper: 5e-7)."}
    )
    optim: str = field(default="rmsprop", metadata={"help": "Optimizer (paper: RMSprop)."})
    per_device_train_batch_size: int = field(
        default=64, metadata={"help": "Pairs per device (paper: 64)."}
    )
    per_device_eval_batch_size: int = field(
        default=32, metadata={"help": "Eval pairs per device (32)."}
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Gradient clipping norm (paper: 1.0)."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs (paper: one epoch)."})
    logging_steps: float = field(
        default=10, metadata={"help": "Log loss/margins/strength every N steps."}
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Kept False: the trainer itself keeps the token columns and the numeric "
            "per-pair columns (reference log-probs, pair_variance, agreement) that "
            "objectives read."
        },
    )

    def __post_init__(self) -> None:
        self.validate()
        super().__post_init__()

    def objective_settings(self) -> dict[str, Any]:
        """The objective settings this config sets (fields left at ``None`` are not set)."""
        return {name: getattr(self, name) for name in objective_settings()
                if getattr(self, name) is not None}

    def objective_spec(self) -> ObjectiveSpec:
        """The objective this config names, with its settings checked (nothing built)."""
        return resolve_objective(self.objective, **self.objective_settings())

    def build_objective(self) -> Objective:
        """The :class:`~pluralign.objectives.Objective` this config describes, freshly built
        (``PreferenceTrainer`` calls this once)."""
        return self.objective_spec().build()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field and the fix for any invalid value.

        The objective's settings are checked without building it (:meth:`objective_spec`)."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        self.objective_spec()
        need(
            self.reference_dtype in REFERENCE_DTYPES,
            f"reference_dtype={self.reference_dtype!r} is unknown; use one of "
            f"{', '.join(REFERENCE_DTYPES)}",
        )
        check_fields(self, {
            "learning_rate": NON_NEGATIVE, "strength_learning_rate": NON_NEGATIVE,
            "num_train_epochs": POSITIVE, "max_grad_norm": POSITIVE, "seed": SEED,
            **dict.fromkeys(("per_device_train_batch_size", "per_device_eval_batch_size",
                             "gradient_accumulation_steps"), COUNT),
        })
        if self.precompute_ref_batch_size is not None:
            check_fields(self, {"precompute_ref_batch_size": COUNT})
        check_lengths(self.max_length, self.max_prompt_length, "PreferenceConfig")
        check_steps(self)
