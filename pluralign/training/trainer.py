"""``PreferenceTrainer``: DPO / MixDPO / corrected DPO / agreement / group-robust training on
``transformers.Trainer``.

Per step ([MixDPO, §3]): one forward pass of the policy over the batch (by default packed: each
prompt once, no padding, :mod:`pluralign.training.packing`; else ``[2B, L]`` padded rows, chosen
then rejected) gives summed completion log-probs; the reference log-probs come from a frozen
reference model (under ``torch.inference_mode``), from the same peft model with its adapters
disabled, or from columns precomputed once before training. The margin ``Δ = (log π_θ(y_w) − log
π_ref(y_w)) − (log π_θ(y_l) − log π_ref(y_l))`` goes through the configured objective; the loss is
the mean over pairs.

What the ``Trainer`` does not know and this class adds:

* the trainer asks the objective which per-pair columns its batches carry
  (:meth:`Objective.columns <pluralign.objectives.Objective.columns>`): id columns it derives
  (a group-robust objective's ``group`` from its ``group_by``) are built and counted before the
  columns are checked, and the objective hears the training split's pairs per id
  (:func:`~pluralign.training.columns.prepare_columns`); every declared column is required and
  reaches ``forward`` in the batch;
* an objective that declares a ``whole`` column (panel MixDPO's annotators) gets batches of whole
  groups, sharded whole across processes
  (:class:`~pluralign.training.sampler.WholeGroupBatchSampler`, for training and evaluation);
* the objective's strength parameters are trained in their own optimizer parameter group
  (``strength_learning_rate``), averaged across processes like DDP averages the policy gradients,
  saved to
  ``strength.safetensors`` in every checkpoint and restored on resume;
* checkpoints are written into a hidden staging folder and renamed into place once complete, so a
  killed run never leaves a half-written ``checkpoint-N`` for ``resume_from_checkpoint`` to pick up
  (:class:`~pluralign.training.checkpoints.StagedCheckpoints`, shared with SFT);
* per-step logs carry ``margin_mean``, ``accuracy``, ``beta_mean``, ``beta_var`` and
  ``strength/<param>`` (reaching every ``report_to`` integration and ``trainer_state.json``'s
  ``log_history``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
import torch.distributed as dist
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback

from pluralign.errors import ConfigError
from pluralign.io import atomic_path
from pluralign.numerics import NumericsError, sync_free
from pluralign.objectives import Objective
from pluralign.training.checkpoints import StagedCheckpoints, unreadable_checkpoint
from pluralign.training.columns import prepare_columns
from pluralign.training.config import PreferenceConfig
from pluralign.training.launch import CheckedLaunch
from pluralign.training.logps import supports_completion_head
from pluralign.training.packing import PackedPreferenceCollator, batch_sequence_logps
from pluralign.training.sampler import WholeGroupBatchSampler
from pluralign.training.tokenization import (
    REF_COLUMNS,
    REQUIRED_COLUMNS,
    TOKEN_COLUMNS,
    PreferenceCollator,
    check_pair_columns,
    tokenize_pair,
)

STRENGTH_FILE = "strength.safetensors"
_NUMERIC = (
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "bool",
)


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


@contextmanager
def disabled_adapters(model: nn.Module) -> Iterator[None]:
    """A peft model with its adapters switched off, as ``model.disable_adapter()`` does, without
    the layer-status scan that peft runs on every entry (``get_model_status``: about 0.2 s of
    CPU per call on SmolLM2-135M with LoRA on q/k/v/o, 3% of a training step; bench/trainer.py).

    Adapter layers (LoRA and its kin) are switched off and back on through the tuner
    (``disable_adapter_layers``/``enable_adapter_layers``: what peft's context does); adapters
    already off stay off. Prompt-learning models take peft's own context.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    config = getattr(model, "active_peft_config", None)
    tuner = getattr(model, "base_model", None)
    layered = (
        config is not None
        and not getattr(config, "is_prompt_learning", False)
        and not getattr(config, "is_adaption_prompt", False)
        and hasattr(tuner, "disable_adapter_layers")
    )
    first = (
        next((m for m in tuner.modules() if isinstance(m, BaseTunerLayer)), None)
        if layered
        else None
    )
    if first is None:
        with model.disable_adapter():
            yield
        return
    if first.disable_adapters:
        yield
        return
    tuner.disable_adapter_layers()
    try:
        yield
    finally:
        tuner.enable_adapter_layers()


def numeric_columns(dataset: datasets.Dataset) -> list[str]:
    """Columns holding one number per pair (kept for the objective: pair_variance, agreement,
    ...)."""
    return [
        name
        for name, feature in dataset.features.items()
        if isinstance(feature, datasets.Value) and feature.dtype in _NUMERIC
    ]


def tokenize_dataset(
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_prompt_length: int,
    name: str = "train",
) -> datasets.Dataset:
    """Check the pair columns, tokenise every pair once, keep token and numeric per-pair columns."""
    check_pair_columns(dataset, name)
    keep = set(numeric_columns(dataset)) - set(TOKEN_COLUMNS)
    return dataset.map(
        tokenize_pair,
        fn_kwargs={
            "tokenizer": tokenizer,
            "max_length": max_length,
            "max_prompt_length": max_prompt_length,
        },
        remove_columns=[c for c in dataset.column_names if c not in keep],
        desc=f"Tokenizing {name} pairs",
    )


def longest_first_batches(dataset: datasets.Dataset, batch_size: int) -> list[list[int]]:
    """Row indices of ``dataset`` (tokenised pairs) in batches of ``batch_size``, the pairs sorted
    by their tokens (prompt + chosen + rejected), longest first, ties in row order: the pairs of
    a batch have similar lengths, so packed rows are full and the row groups narrow. A pair's
    log-probs do not depend on its batch (packing.py), so the precompute pass may score the
    pairs in any order and write each back to its own row."""
    table = dataset.select_columns(list(TOKEN_COLUMNS)).with_format("arrow")[:]
    lengths = sum(
        pc.list_value_length(table.column(name)).to_numpy(zero_copy_only=False)
        for name in TOKEN_COLUMNS
    )
    order = np.argsort(-lengths, kind="stable").tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class _ZeroStrengthGrads(TrainerCallback):
    """The Trainer zeroes only the model's gradients; the objective's are zeroed after each step."""

    def __init__(self, objective: nn.Module) -> None:
        self.objective = objective

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.objective.zero_grad(set_to_none=True)


class PreferenceTrainer(CheckedLaunch, StagedCheckpoints, Trainer):
    """Preference optimisation of a causal LM (see the module docstring).

    Args:
        model: the policy (a ``PreTrainedModel`` or a peft model), normally an SFT checkpoint.
        ref_model: frozen reference. If None: the base model with adapters disabled for a peft
            policy; the precomputed log-probs with ``args.precompute_ref_log_probs``; else a frozen
            copy of ``model`` (in ``args.reference_dtype``; ``auto``: as the policy).
        args: a :class:`PreferenceConfig`.
        train_dataset / eval_dataset: ``datasets.Dataset`` with ``prompt``, ``chosen``,
            ``rejected`` (strings or chat messages); numeric per-pair columns reach the objective.
        processing_class: the tokenizer.
        objective: an already built :class:`~pluralign.objectives.Objective` (default: built
            from ``args``).
    """

    def __init__(
        self,
        model: PreTrainedModel | nn.Module,
        ref_model: PreTrainedModel | nn.Module | None = None,
        args: PreferenceConfig | None = None,
        train_dataset: datasets.Dataset | None = None,
        eval_dataset: datasets.Dataset | None = None,
        processing_class: PreTrainedTokenizerBase | None = None,
        objective: Objective | None = None,
        **kwargs: Any,
    ) -> None:
        args = args if args is not None else PreferenceConfig(output_dir="pluralign_output")
        if not isinstance(args, PreferenceConfig):
            raise ConfigError(f"args must be a PreferenceConfig, got {type(args).__name__}")
        if processing_class is None:
            raise ConfigError(
                "PreferenceTrainer needs processing_class=<tokenizer> to tokenise pairs"
            )
        self.objective = objective if objective is not None else args.build_objective()
        train_dataset, eval_dataset = prepare_columns(self.objective, train_dataset, eval_dataset)
        needed = tuple(column.name for column in self.objective.columns())
        for name, dataset in (("train", train_dataset), ("eval", eval_dataset)):
            if dataset is not None:
                check_pair_columns(dataset, name, required=(*REQUIRED_COLUMNS, *needed))
        tok_kwargs = {
            "tokenizer": processing_class,
            "max_length": args.max_length,
            "max_prompt_length": args.max_prompt_length,
        }
        if train_dataset is not None:
            train_dataset = tokenize_dataset(train_dataset, name="train", **tok_kwargs)
        if eval_dataset is not None:
            eval_dataset = tokenize_dataset(eval_dataset, name="eval", **tok_kwargs)
        if ref_model is None and not _is_peft(model) and not args.precompute_ref_log_probs:
            ref_model = copy.deepcopy(model)
        if ref_model is not None:
            if args.reference_dtype != "auto":
                ref_model = ref_model.to(dtype=getattr(torch, args.reference_dtype))
            ref_model = ref_model.eval().requires_grad_(False)
        pad_id = processing_class.pad_token_id
        if pad_id is None:
            pad_id = processing_class.eos_token_id
        if args.share_prompt or args.padding_free:
            collator = PackedPreferenceCollator(
                pad_id, args.share_prompt, args.padding_free, args.pad_to_multiple_of
            )
        else:
            collator = PreferenceCollator(pad_id, args.pad_to_multiple_of)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            data_collator=collator,
            **kwargs,
        )
        if self.is_deepspeed_enabled and ref_model is not None:
            raise ConfigError(
                "with DeepSpeed, use precompute_ref_log_probs: true or a peft adapter "
                "instead of a separate reference model"
            )
        if ref_model is not None and self.is_fsdp_enabled:
            ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        elif ref_model is not None:
            ref_model = ref_model.to(self.args.device)
        self.ref_model = ref_model
        self.objective.to(self.args.device)
        self.add_callback(_ZeroStrengthGrads(self.objective))
        self._stats: dict[str, list[torch.Tensor]] = {"train": [], "eval": []}
        if args.precompute_ref_log_probs:
            self.train_dataset = self._with_ref_logps(self.train_dataset, "train")
            self.eval_dataset = self._with_ref_logps(self.eval_dataset, "eval")
            self.ref_model = None

    # ------------------------------------------------------------------ batches
    def _whole_group_sampler(
        self, dataset: Any, batch_size: int, shuffle: bool
    ) -> WholeGroupBatchSampler | None:
        """Batches of whole groups when the objective declares a ``whole`` column, else None."""
        whole = [c.name for c in self.objective.columns() if c.whole]
        if not whole or dataset is None or whole[0] not in dataset.column_names:
            return None  # a dataset without the column is refused where it is read
        if len(whole) > 1:
            raise ConfigError(f"the objective declares several whole-group columns {whole}; "
                              "batches can hold whole groups of one column only")
        return WholeGroupBatchSampler(
            dataset[whole[0]], batch_size, num_processes=self.accelerator.num_processes,
            rank=self.accelerator.process_index, seed=self.args.seed, shuffle=shuffle)

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        grouped = self._whole_group_sampler(dataset, self._train_batch_size, shuffle=True)
        return grouped if grouped is not None else super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset: Any) -> Any:
        grouped = self._whole_group_sampler(
            eval_dataset, self.args.per_device_eval_batch_size, shuffle=False)
        return grouped if grouped is not None else super()._get_eval_sampler(eval_dataset)

    # ------------------------------------------------------------------ log-probs
    def _policy_logps(
        self, model: nn.Module, inputs: Mapping[str, torch.Tensor], completion_head: bool
    ) -> torch.Tensor:
        """Summed completion log-probs ``[2B]`` of the policy, under the run's mixed precision.

        The completion-only head calls the backbone directly, past the autocast that accelerate
        wraps around the model's forward, so bf16/fp16 autocast is entered here for either path.
        """
        with self.accelerator.autocast():
            return batch_sequence_logps(model, inputs, completion_head)

    def _reference_logps(
        self, inputs: Mapping[str, torch.Tensor], completion_head: bool = True
    ) -> torch.Tensor:
        """Summed completion log-probs ``[2B]`` of the reference policy (no autograd graph)."""
        if REF_COLUMNS[0] in inputs:
            return torch.cat([inputs[REF_COLUMNS[0]], inputs[REF_COLUMNS[1]]])
        # A float32 reference (the paper's setting) is scored outside autocast so it really runs
        # in float32; any other under the run's bf16/fp16 mixed precision, like the policy.
        precision = (
            torch.autocast(device_type=inputs["input_ids"].device.type, enabled=False)
            if self.args.reference_dtype == "float32"
            else self.accelerator.autocast()
        )
        with torch.inference_mode(), precision:
            if self.ref_model is not None:
                logps = batch_sequence_logps(self.ref_model, inputs, completion_head)
            else:
                policy = self.accelerator.unwrap_model(self.model)
                if not _is_peft(policy):
                    raise ConfigError(
                        "no reference: pass ref_model, a peft model, or precompute_ref_log_probs"
                    )
                with disabled_adapters(policy):
                    logps = batch_sequence_logps(policy, inputs, completion_head)
        return logps.clone()

    def _with_ref_logps(
        self, dataset: datasets.Dataset | None, name: str
    ) -> datasets.Dataset | None:
        """Add ``ref_chosen_logps``/``ref_rejected_logps`` columns, each process scoring a
        contiguous shard in packed batches of ``precompute_ref_batch_size`` pairs, longest
        first (:func:`longest_first_batches`)."""
        if dataset is None:
            return None
        dataset = dataset.remove_columns([c for c in REF_COLUMNS if c in dataset.column_names])
        if (
            self.ref_model is None
            and not _is_peft(self.model)
            and self.args.reference_dtype != "auto"
        ):
            ref_dtype = getattr(torch, self.args.reference_dtype)
            if self.model.dtype != ref_dtype:
                self.ref_model = (
                    copy.deepcopy(self.model).to(ref_dtype).eval().requires_grad_(False)
                )
        shard = dataset.shard(
            self.accelerator.num_processes, self.accelerator.process_index, contiguous=True
        )
        batch_size = self.args.precompute_ref_batch_size or 2 * self.args.per_device_eval_batch_size
        loader = DataLoader(
            shard,
            batch_sampler=longest_first_batches(shard, batch_size),
            collate_fn=self.data_collator,
        )
        # Without a reference model: a peft policy with its adapters disabled, else the policy.
        ref_model = self.ref_model
        if ref_model is None and not _is_peft(self.model):
            self.ref_model = self.model
        chosen = torch.empty(len(shard), dtype=torch.float64)
        rejected = torch.empty(len(shard), dtype=torch.float64)
        try:
            for rows, batch in zip(loader.batch_sampler, loader, strict=True):
                batch = self._prepare_inputs(batch)
                c, r = self._reference_logps(batch).chunk(2)
                chosen[rows] = c.detach().to("cpu", torch.float64)
                rejected[rows] = r.detach().to("cpu", torch.float64)
        finally:
            self.ref_model = ref_model
        chosen, rejected = chosen.tolist(), rejected.tolist()
        if self.accelerator.num_processes > 1:
            chosen, rejected = gather_object(chosen), gather_object(rejected)
        return dataset.add_column(REF_COLUMNS[0], chosen).add_column(REF_COLUMNS[1], rejected)

    # ------------------------------------------------------------------ loss and metrics
    def compute_loss(
        self,
        model: nn.Module,
        inputs: Mapping[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean objective loss over the pairs of the batch (see the module docstring)."""
        head = supports_completion_head(model)
        logps = self._policy_logps(model, inputs, head)
        ref_logps = self._reference_logps(inputs, head)
        logratio_chosen, logratio_rejected = (logps - ref_logps).chunk(2)
        margin = logratio_chosen - logratio_rejected
        with sync_free():  # no host reads per step; margins are checked at the next log instead
            loss = self.objective(margin, inputs).mean()
        detached = margin.detach()
        mode = "train" if model.training else "eval"
        self._stats[mode].append(
            torch.stack(
                [
                    detached.nan_to_num(posinf=0.0, neginf=0.0).sum(),
                    (detached > 0).sum().to(detached.dtype),
                    torch.full((), detached.numel(), dtype=detached.dtype, device=detached.device),
                    (~torch.isfinite(detached)).sum().to(detached.dtype),
                ]
            )
        )
        if return_outputs:
            return loss, {"margin": detached}
        return loss

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """The Trainer's step, plus averaging the strength gradients across processes (DDP does the
        policy)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.num_processes > 1 and dist.is_initialized():
            for p in self.objective.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                    p.grad.div_(self.accelerator.num_processes)
        return loss

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, None, None]:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add margin_mean / accuracy (averaged over every process) and the objective's strength
        metrics."""
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        if self._stats[mode]:
            totals = torch.stack(self._stats[mode]).sum(dim=0)
            if self.accelerator.num_processes > 1:
                totals = self.accelerator.reduce(totals, reduction="sum")
            margin_sum, correct, count, nonfinite = totals.tolist()
            if nonfinite:
                raise NumericsError(
                    f"{int(nonfinite)} of {int(count)} {mode} reward margins since the last log "
                    "were not finite (check the policy/reference log-probabilities: learning "
                    "rate, dtype, data)"
                )
            logs[f"{prefix}margin_mean"] = margin_sum / count
            logs[f"{prefix}accuracy"] = correct / count
            self._stats[mode] = []
        if mode == "eval" or "loss" in logs:
            logs.update({f"{prefix}{k}": v for k, v in self.objective.metrics().items()})
        super().log(logs, start_time)

    # ------------------------------------------------------------------ optimizer and checkpoints
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer plus one parameter group for the strength parameters."""
        optimizer = super().create_optimizer(model)
        params = [p for p in self.objective.parameters() if p.requires_grad]
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if params and not known.intersection(map(id, params)):
            optimizer.add_param_group(
                {"params": params, "lr": self.args.strength_learning_rate, "weight_decay": 0.0}
            )
        return optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy (safetensors) and, beside it, the objective's strength parameters."""
        super().save_model(output_dir, _internal_call)
        state = {k: v.detach().cpu().contiguous() for k, v in self.objective.state_dict().items()}
        if self.args.should_save and state:
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            with atomic_path(os.path.join(output_dir, STRENGTH_FILE)) as tmp:
                save_file(state, str(tmp), metadata={"objective": type(self.objective).__name__})

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: nn.Module | None = None
    ) -> None:
        """Restore the policy (:class:`StagedCheckpoints`) and the strength parameters saved
        beside it."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, STRENGTH_FILE)
        if os.path.isfile(path):
            with unreadable_checkpoint(resume_from_checkpoint, STRENGTH_FILE):
                state = load_file(path, device=str(self.args.device))
            self.objective.load_state_dict(state, strict=True)
