"""Refuse multi-process launches that would train something other than what was asked.

Two launches look fine and are not, both on a machine without GPUs:

* **Processes that train alone.** ``accelerate launch`` / ``torchrun`` start N processes and set
  ``LOCAL_RANK``; without ``use_cpu: true`` accelerate finds no GPU, sets up no data parallelism
  (``DistributedType.NO``) and every process trains its own copy on the whole dataset, each
  writing the same run folder. With ``use_cpu: true`` the processes form a gloo group and the
  Trainer wraps the model in DDP.
* **FSDP that is really DDP.** accelerate (checked on 1.15) turns FSDP on only for GPU-like
  process groups (``AcceleratorState``: the FSDP switch sits in the branch for MULTI_GPU, NPU, XPU,
  ...; ``MULTI_CPU`` is not among them), and ``transformers.Trainer`` builds its FSDP through that
  state. An FSDP launch on CPU therefore runs plain DDP without a word. PyTorch's own FSDP2
  (``torch.distributed.fsdp.fully_shard``) does run on gloo; it is the accelerate/Trainer path that
  has no CPU variant, so pluralign ships none (``docs/multi_gpu.md``).

:class:`CheckedLaunch` (a ``transformers.Trainer`` mixin, used by both pluralign trainers) raises
:class:`~pluralign.errors.ConfigError` for both before any step runs.
"""

from __future__ import annotations

import os
from typing import Any

import torch.distributed as dist
from accelerate.utils import DistributedType

from pluralign.errors import ConfigError


def _fsdp_requested(args: Any) -> bool:
    """FSDP asked for by the launcher (``accelerate launch`` with an FSDP config) or the args."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or bool(
        getattr(args, "fsdp", None))


def check_launch(args: Any, distributed_type: DistributedType) -> None:
    """Raise :class:`ConfigError` when the launch and what accelerate set up disagree.

    Args:
        args: the trainer's ``TrainingArguments``.
        distributed_type: ``trainer.accelerator.distributed_type``.
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    world = max(world, int(os.environ.get("WORLD_SIZE", "1") or 1))
    if _fsdp_requested(args) and distributed_type != DistributedType.FSDP:
        raise ConfigError(
            f"FSDP was requested but accelerate set this launch up as {distributed_type.value}: "
            "accelerate enables FSDP only on GPU (or NPU/XPU) process groups, not on CPU (gloo) "
            "ones. On CPU use DDP: accelerate launch --multi_gpu --num_processes N -m "
            "pluralign.cli train ... training.use_cpu=true (docs/multi_gpu.md)")
    if world > 1 and distributed_type == DistributedType.NO:
        raise ConfigError(
            f"{world} processes were launched but accelerate found no device to share the work "
            "on, so each process would train alone on the whole dataset. Without GPUs set "
            "training.use_cpu=true (the processes then form a gloo group and train with DDP).")


class CheckedLaunch:
    """``transformers.Trainer`` mixin: :func:`check_launch` once the accelerator exists.

    Use as ``class MyTrainer(CheckedLaunch, Trainer)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_launch(self.args, self.accelerator.distributed_type)
