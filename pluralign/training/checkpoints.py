"""Checkpoints that are complete or absent, and that know which configuration wrote them.

Shared by ``train`` (:class:`~pluralign.training.trainer.PreferenceTrainer`) and ``sft``:

* :class:`StagedCheckpoints` (a ``transformers.Trainer`` mixin) writes ``checkpoint-N`` into a
  hidden staging folder and renames it into place once every file is written, so a kill or Ctrl-C
  mid-save never leaves a half-written ``checkpoint-N``; it also stores the run's *fingerprint*
  (:data:`FINGERPRINT_FILE`) inside each checkpoint before the rename.
* The fingerprint (:func:`run_fingerprint`) is the configuration that matters for resuming: the
  flattened recipe (model, tokenizer, objective, strength, data, seeds, learning rates, ...)
  without the keys in :data:`RESUME_IGNORED` (output folder, logging, saving, evaluation cadence,
  step budget).
* :func:`resume_checkpoint` finds the last *complete* checkpoint of a run folder and checks that it
  was written by the same configuration, raising :class:`ConfigError` before anything is written
  (a fresh run's folder goes through :func:`pluralign.runs.run_folder`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import pickle
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import PreTrainedModel
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import SAFE_WEIGHTS_NAME

from pluralign.errors import ConfigError
from pluralign.io import follow_umask, write_json

STAGING_DIR = ".staging"
#: Written into every checkpoint: ``{"fingerprint": {dotted key: value}}``.
FINGERPRINT_FILE = "pluralign_fingerprint.json"
#: Key names (last dotted component, shell patterns) that do not change what a resumed run
#: computes: where it writes, what it logs, when it saves or evaluates, and how many steps it
#: runs in all (so a finished run can be extended by raising ``max_steps``).
RESUME_IGNORED = (
    "output_dir", "logging_*", "report_to", "run_name", "disable_tqdm", "save_*", "eval_*",
    "per_device_eval_batch_size", "dataloader_*", "resume*", "overwrite*", "max_steps",
    "num_train_epochs", "push_to_hub", "hub_*", "threads", "local_rank",
)
#: Files whose presence marks a checkpoint's model weights as written.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                 "pytorch_model.bin")
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class StagedCheckpoints:
    """``transformers.Trainer`` mixin: atomic ``checkpoint-N`` folders carrying a fingerprint.

    Use as ``class MyTrainer(StagedCheckpoints, Trainer)``. Set :attr:`run_fingerprint` (from
    :func:`run_fingerprint`) before training to have it stored in every checkpoint.
    ``train(resume_from_checkpoint=True)`` resumes from the last *complete* checkpoint
    (:func:`resume_checkpoint`, checking the fingerprint when one is set), not simply the
    highest-numbered folder.
    """

    _staging = False
    run_fingerprint: Mapping[str, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.args.should_save:  # a staging folder left by a killed save is garbage
            shutil.rmtree(os.path.join(self.args.output_dir, STAGING_DIR), ignore_errors=True)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        if resume_from_checkpoint is True:
            resume_from_checkpoint = str(
                resume_checkpoint(self.args.output_dir, self.run_fingerprint))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _load_from_checkpoint(self, resume_from_checkpoint: str,
                              model: nn.Module | None = None) -> None:
        """Restore the model weights of a checkpoint, exactly and quietly.

        transformers 5 saves some weights under legacy names (GPT-NeoX's ``lm_head`` as
        ``embed_out``; a tied head not at all), and ``Trainer``'s resume loads them non-strictly
        without renaming: the head kept its fresh initialisation and the log said "unexpected
        keys ['embed_out.weight']". When the checkpoint's names differ from the model's, the
        weights are read with ``from_pretrained`` (which renames and ties) and loaded strictly.
        """
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        weights = os.path.join(resume_from_checkpoint, SAFE_WEIGHTS_NAME)
        plain = not (getattr(self, "is_deepspeed_enabled", False)
                     or getattr(self, "is_fsdp_enabled", False))
        if plain and isinstance(target, PreTrainedModel) and os.path.isfile(weights):
            with unreadable_checkpoint(resume_from_checkpoint, SAFE_WEIGHTS_NAME):
                with safe_open(weights, framework="pt") as f:
                    saved = set(f.keys())
                if saved != set(target.state_dict()):
                    fresh = type(target).from_pretrained(resume_from_checkpoint,
                                                         dtype=target.dtype)
                    target.load_state_dict(fresh.state_dict(), strict=True)
                    return
        with unreadable_checkpoint(resume_from_checkpoint, SAFE_WEIGHTS_NAME):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_rng_state(self, checkpoint: str | None) -> None:
        with unreadable_checkpoint(checkpoint, "rng_state.pth"):
            super()._load_rng_state(checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        with unreadable_checkpoint(checkpoint, "optimizer.pt", "scheduler.pt"):
            super()._load_optimizer_and_scheduler(checkpoint)

    def _load_scaler(self, checkpoint: str | None) -> None:
        with unreadable_checkpoint(checkpoint, "scaler.pt"):
            super()._load_scaler(checkpoint)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save as ``Trainer`` does, then give the model weights the umask's mode (transformers
        writes them through a private 0o600 temporary file)."""
        super()._save(output_dir, state_dict)
        folder = Path(output_dir if output_dir is not None else self.args.output_dir)
        if self.args.should_save:
            for weights in [*folder.glob("*.safetensors"), *folder.glob("*.bin")]:
                follow_umask(weights)

    def _get_output_dir(self, trial: Any) -> str:
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Write ``checkpoint-N`` into a staging folder, then rename it into place once complete."""
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged = os.path.join(run_dir, STAGING_DIR, name)
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if self.run_fingerprint is not None:
                write_json(os.path.join(staged, FINGERPRINT_FILE),
                           {"fingerprint": dict(self.run_fingerprint)})
            final = os.path.join(run_dir, name)
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(staged, final)
            shutil.rmtree(os.path.join(run_dir, STAGING_DIR), ignore_errors=True)
            if self.state.best_model_checkpoint:
                self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(
                    os.path.join(run_dir, STAGING_DIR), run_dir
                )
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()


@contextlib.contextmanager
def unreadable_checkpoint(checkpoint: str | os.PathLike[str] | None,
                          *files: str) -> Iterator[None]:
    """Turn a checkpoint file that does not load (changed after it was written: torch's
    ``weights_only`` refusal of a tampered pickle, a truncated archive or safetensors file) into
    one :class:`ConfigError` naming the checkpoint and ``files``, instead of torch's traceback."""
    try:
        yield
    except (pickle.UnpicklingError, EOFError, RuntimeError, SafetensorError, OSError,
            ValueError) as exc:
        if checkpoint is None:
            raise
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        names = " or ".join(files)
        raise ConfigError(
            f"cannot resume from {checkpoint}: its {names} does not load ({reason}); it was "
            "changed after it was written: delete that checkpoint folder to resume from the one "
            "before it, or start a fresh run (overwrite=true)") from None


# ---------------------------------------------------------------------------- fingerprints
def _flatten(node: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(node, Mapping) and node:
        for key, value in node.items():
            _flatten(value, f"{prefix}{key}.", out)
    else:
        out[prefix[:-1]] = node


def run_fingerprint(config: Mapping[str, Any],
                    ignored: tuple[str, ...] = RESUME_IGNORED) -> dict[str, Any]:
    """The resume-relevant part of a (nested) run configuration as ``{dotted key: value}``.

    Nested mappings are flattened (``{"training": {"learning_rate": 1e-3}}`` →
    ``{"training.learning_rate": 1e-3}``); keys whose last component matches a pattern in
    ``ignored`` are left out; values are normalised through JSON (tuples become lists, objects
    their ``str``), so a fingerprint compares equal to itself after a round trip through
    :data:`FINGERPRINT_FILE`.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"run configuration must be a mapping, got {type(config).__name__}")
    flat: dict[str, Any] = {}
    _flatten(config, "", flat)
    kept = {k: v for k, v in flat.items()
            if not any(fnmatch.fnmatchcase(k.rsplit(".", 1)[-1], p) for p in ignored)}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def fingerprint_differences(saved: Mapping[str, Any],
                            current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, current value)}`` for every key that differs (absent = ``None``)."""
    keys = sorted(set(saved) | set(current))
    return {k: (saved.get(k), current.get(k)) for k in keys if saved.get(k) != current.get(k)}


# ---------------------------------------------------------------------------- run folders
def checkpoint_folders(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``checkpoint-N`` folders of ``run_dir``, highest step first (none if it is missing)."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def is_complete_checkpoint(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a whole checkpoint: a readable ``trainer_state.json`` with a
    ``global_step``, model weights, and no empty file (what an interrupted plain save leaves)."""
    folder = Path(folder)
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        files = [p for p in folder.iterdir() if p.is_file()]
    except (OSError, ValueError):
        return False
    return (isinstance(state, dict) and isinstance(state.get("global_step"), int)
            and any((folder / w).is_file() for w in _WEIGHT_FILES)
            and all(p.stat().st_size > 0 for p in files))


def last_complete_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The highest-step complete checkpoint of ``run_dir`` (partial ones skipped), or None."""
    return next((p for p in checkpoint_folders(run_dir) if is_complete_checkpoint(p)), None)


def check_checkpoint(checkpoint: str | os.PathLike[str], fingerprint: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` unless ``checkpoint`` was written with ``fingerprint``.

    The message names every differing key with its saved and current value.
    """
    path = Path(checkpoint) / FINGERPRINT_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(
            f"cannot resume from {checkpoint}: it has no readable {FINGERPRINT_FILE}, so it is "
            "not known to come from this configuration (it was written by another tool or an "
            "older pluralign); start a fresh run in a new output_dir") from None
    diff = fingerprint_differences(saved, run_fingerprint(fingerprint))
    if diff:
        shown = "; ".join(f"{k}: {was!r} in the checkpoint, {now!r} now"
                          for k, (was, now) in list(diff.items())[:8])
        more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
        raise ConfigError(
            f"cannot resume from {checkpoint}: it was written by another configuration "
            f"({len(diff)} differing key(s): {shown}{more}); restore those settings to resume, "
            "or start a fresh run in a new output_dir")


def resume_checkpoint(run_dir: str | os.PathLike[str],
                      fingerprint: Mapping[str, Any] | None) -> Path:
    """The checkpoint to resume ``run_dir`` from: the last complete one, checked against
    ``fingerprint`` (skipped when None). Raises :class:`ConfigError` when there is nothing to
    resume or the checkpoint belongs to another configuration."""
    checkpoint = last_complete_checkpoint(run_dir)
    if checkpoint is None:
        partial = [p.name for p in checkpoint_folders(run_dir)]
        found = f" (only incomplete ones: {', '.join(partial)})" if partial else ""
        raise ConfigError(
            f"nothing to resume in {run_dir}: no complete checkpoint-N folder{found}; run "
            "with resume=false to start training")
    if fingerprint is not None:
        check_checkpoint(checkpoint, fingerprint)
    return checkpoint
