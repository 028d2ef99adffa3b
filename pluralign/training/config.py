"""``PreferenceConfig``: every knob of a preference-optimisation run, with the MixDPO paper's
defaults.

It is a :class:`transformers.TrainingArguments`, so everything the Hugging Face ``Trainer``
understands (``output_dir``, ``seed``, ``save_steps``, ``report_to``, ``bf16``, ``fsdp``, ...) is
available as well. Defaults follow seeds/001 §4.3 and Appendix E: RMSprop with policy learning rate
5e-7, gradient clipping at 1.0, batch 64 (eval 32), no gradient accumulation, one epoch, max length
128 with max prompt length 64, a float32 reference model, DPO β = 0.1, LogNormal(μ=−2.3, σ=0.6) and
Gamma(k=2.0, λ=16.7) initial strength distributions (both with E[β] ≈ 0.1) and a strength learning
rate of 1e-4 (the paper's recommended value, §5.2 and Appendix F). Invalid values raise
:class:`~pluralign.errors.ConfigError` at construction, before any model is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments

from pluralign.errors import ConfigError

OBJECTIVE_NAMES = ("dpo", "mixdpo", "corrected_dpo", "agreement")
STRENGTH_FAMILIES = ("point", "lognormal", "gamma")
LOGNORMAL_METHODS = ("quadrature", "monte_carlo")
REFERENCE_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class PreferenceConfig(TrainingArguments):
    """Training arguments for :class:`~pluralign.training.PreferenceTrainer` (paper defaults)."""

    objective: str = field(
        default="dpo",
        metadata={
            "help": "Loss on the policy's reward margins: 'dpo' (fixed beta), 'mixdpo' (beta "
            "drawn from the `strength` distribution, seeds/001 Eq. 3), 'corrected_dpo' "
            "(first-order-corrected DPO, needs a `pair_variance` column) or 'agreement' "
            "(needs an `agreement` column)."
        },
    )
    strength: str = field(
        default="point",
        metadata={
            "help": "Preference-strength family for mixdpo: 'point' (equals DPO), 'lognormal' "
            "or 'gamma'."
        },
    )
    learnable_strength: bool = field(
        default=True,
        metadata={
            "help": "Learn the strength distribution's parameters jointly with the policy; "
            "false gives the paper's 'fixed parameters' baseline."
        },
    )
    beta: float = field(
        default=0.1, metadata={"help": "DPO's fixed preference strength (paper: 0.1)."}
    )
    strength_mu: float = field(
        default=-2.3, metadata={"help": "Initial LogNormal location mu of log beta (paper: -2.3)."}
    )
    strength_sigma: float = field(
        default=0.6,
        metadata={"help": "Initial LogNormal scale sigma > 0 of log beta (paper: 0.6)."},
    )
    strength_shape: float = field(
        default=2.0, metadata={"help": "Initial Gamma shape k > 0 (paper: 2.0)."}
    )
    strength_rate: float = field(
        default=16.7, metadata={"help": "Initial Gamma rate lambda > 0 (paper: 16.7)."}
    )
    lognormal_method: str = field(
        default="quadrature",
        metadata={
            "help": "How E[sigma(beta*margin)] is computed for LogNormal beta: 'quadrature' "
            "(deterministic Gauss-Hermite) or 'monte_carlo' (the paper's K "
            "reparameterised samples)."
        },
    )
    lognormal_num_points: int = field(
        default=16,
        metadata={
            "help": "Quadrature nodes or Monte Carlo samples K for LogNormal beta (paper: K = 16)."
        },
    )
    strength_learning_rate: float = field(
        default=1e-4,
        metadata={
            "help": "Learning rate of the strength parameters, in their own optimizer group "
            "(paper: 1e-4)."
        },
    )
    correction_alpha: float | None = field(
        default=None,
        metadata={
            "help": "corrected_dpo only: weight of the first-order variance correction "
            "(objective default if unset)."
        },
    )
    agreement_num_types: int | None = field(
        default=None,
        metadata={"help": "agreement only: number of user types K (objective default if unset)."},
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
    precompute_ref_logps: bool = field(
        default=False,
        metadata={
            "help": "Compute the reference log-probs once before training and drop the "
            "reference model, instead of a reference forward pass at every step."
        },
    )
    reference_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype of the frozen reference model (paper: float32 even when the policy "
            "is bfloat16)."
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

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field and the fix for any invalid value."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(
            self.objective in OBJECTIVE_NAMES,
            f"objective={self.objective!r} is unknown; use one of {', '.join(OBJECTIVE_NAMES)}",
        )
        need(
            self.strength in STRENGTH_FAMILIES,
            f"strength={self.strength!r} is unknown; use one of {', '.join(STRENGTH_FAMILIES)}",
        )
        need(
            self.lognormal_method in LOGNORMAL_METHODS,
            f"lognormal_method={self.lognormal_method!r} is unknown; use one of "
            f"{', '.join(LOGNORMAL_METHODS)}",
        )
        need(
            self.reference_dtype in REFERENCE_DTYPES,
            f"reference_dtype={self.reference_dtype!r} is unknown; use one of "
            f"{', '.join(REFERENCE_DTYPES)}",
        )
        for name in ("learning_rate", "strength_learning_rate"):
            value = getattr(self, name)
            need(
                value >= 0,
                f"{name}={value!r} is negative; learning rates must be >= 0 "
                f"(the paper uses learning_rate=5e-7 and strength_learning_rate=1e-4)",
            )
        for name in ("beta", "strength_sigma", "strength_shape", "strength_rate"):
            value = getattr(self, name)
            need(value > 0, f"{name}={value!r} is out of range; it must be > 0")
        need(
            self.lognormal_num_points >= 1,
            f"lognormal_num_points={self.lognormal_num_points!r} must be >= 1 (paper: 16)",
        )
        need(self.max_length >= 2, f"max_length={self.max_length!r} must be >= 2 (paper: 128)")
        need(
            0 <= self.max_prompt_length < self.max_length,
            f"max_prompt_length={self.max_prompt_length!r} must be in [0, max_length="
            f"{self.max_length}) so completions keep at least one token",
        )
        need(
            self.correction_alpha is None or self.correction_alpha >= 0,
            f"correction_alpha={self.correction_alpha!r} must be >= 0",
        )
        need(
            self.agreement_num_types is None or self.agreement_num_types >= 1,
            f"agreement_num_types={self.agreement_num_types!r} must be >= 1",
        )

    def objective_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`pluralign.objectives.build_objective` for this config."""
        kwargs: dict[str, Any] = {"beta": self.beta}
        if self.objective == "mixdpo":
            kwargs.update(strength=self.strength, learnable_strength=self.learnable_strength)
            if self.strength == "lognormal":
                kwargs.update(
                    mu=self.strength_mu,
                    sigma=self.strength_sigma,
                    method=self.lognormal_method,
                    num_points=self.lognormal_num_points,
                )
            elif self.strength == "gamma":
                kwargs.update(shape=self.strength_shape, rate=self.strength_rate)
        elif self.objective == "corrected_dpo" and self.correction_alpha is not None:
            kwargs["alpha"] = self.correction_alpha
        elif self.objective == "agreement" and self.agreement_num_types is not None:
            kwargs["num_types"] = self.agreement_num_types
        return kwargs
