"""Pieces shared by the reward models: the Bradley–Terry likelihood, a minibatch loop, checkpoints.

Every reward model here is trained on frozen embeddings, so training is a plain loop over index
batches of in-memory tensors; checkpoints are a safetensors state dict beside a ``config.json``,
both written atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from pluralign.errors import ConfigError, PluralignError
from pluralign.io import atomic_path, write_text
from pluralign.validation import COUNT, FRACTION, INDEX, NON_NEGATIVE, check_fields

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class RewardTrainingConfig:
    """Settings every reward model here shares (the base of :class:`BradleyTerryConfig` and
    :class:`PALConfig`).

    Attributes:
        hidden_dim: width of the head's hidden layer; 0 gives a linear map of the embeddings.
        weight_decay: AdamW weight decay.
        epochs: passes over the training pairs.
        batch_size: pairs per step.
        validation_fraction: share of the training pairs held out to pick the best epoch by
            validation loss (early stopping); 0 trains on all pairs and keeps the last epoch.
        seed: initialisation and shuffling seed.
        show_progress: tqdm bars.
    """

    hidden_dim: int = 128
    weight_decay: float = 0.01
    epochs: int = 20
    batch_size: int = 256
    validation_fraction: float = 0.1
    seed: int = 0
    show_progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self, {"hidden_dim": INDEX, "seed": INDEX, "epochs": COUNT,
                            "batch_size": COUNT, "weight_decay": NON_NEGATIVE,
                            "validation_fraction": FRACTION})

class CheckpointError(PluralignError):
    """A saved reward model is missing, unreadable or of another kind."""


def bradley_terry_loss(margin: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley–Terry negative log-likelihood ``−log σ(Δ)``, Δ = r(chosen) − r(rejected).

    The logistic preference model P(chosen ≻ rejected) = σ(Δ) (Bradley & Terry 1952; PAL eq. for the
    logistic loss). Computed as ``softplus(−Δ)``, stable for any |Δ|.
    """
    return F.softplus(-margin)


def hinge_loss(margin: torch.Tensor, slack: float = 1.0) -> torch.Tensor:
    """Per-pair hinge ``max(0, slack − Δ)`` (the PAL authors' default loss for PAL-A)."""
    return F.relu(slack - margin)


def pairwise_accuracy(margin: torch.Tensor | np.ndarray) -> float:
    """Fraction of pairs ranked correctly, ``mean(1[Δ > 0] + ½·1[Δ = 0])`` (ties count half)."""
    m = torch.as_tensor(margin, dtype=torch.float64)
    if m.numel() == 0:
        raise PluralignError("pairwise accuracy of an empty set of pairs is undefined")
    return float(((m > 0).double() + 0.5 * (m == 0).double()).mean())


def mlp(in_dim: int, hidden_dim: int, out_dim: int, depth: int = 1) -> nn.Module:
    """``Linear`` when ``hidden_dim == 0``, else ``depth`` hidden GELU layers of width
    ``hidden_dim``."""
    if hidden_dim == 0:
        return nn.Linear(in_dim, out_dim)
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden_dim), nn.GELU()]
        width = hidden_dim
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def fit_minibatch(loss_fn: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                  n: int, epochs: int, batch_size: int, seed: int, desc: str = "training",
                  show_progress: bool = True, module: nn.Module | None = None,
                  validation_loss: Callable[[], float] | None = None) -> list[float]:
    """Minimise ``mean(loss_fn(index_batch))`` over shuffled minibatches of ``range(n)``.

    With ``validation_loss`` (and the ``module`` being trained), the loss on held-out pairs is
    measured after every epoch and the module's state of the best epoch is restored at the end
    (early stopping by model selection). Returns the per-epoch mean training losses.
    """
    if n == 0:
        raise PluralignError("no training pairs: the dataset (after filtering) is empty")
    if validation_loss is not None and module is None:
        raise PluralignError("early stopping needs the module whose best state to keep")
    generator = torch.Generator().manual_seed(seed)
    history: list[float] = []
    best, best_state = float("inf"), None
    for _ in tqdm(range(epochs), desc=desc, disable=not show_progress, leave=False):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            loss = loss_fn(index).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
        if not np.isfinite(total):
            raise PluralignError(f"{desc}: the loss became non-finite; lower the learning rate")
        history.append(total / n)
        if validation_loss is not None and module is not None:
            with torch.no_grad():
                current = validation_loss()
            if current < best:
                best = current
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if best_state is not None and module is not None:
        module.load_state_dict(best_state)
    return history


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, validation) index arrays with ``round(fraction·n)`` validation rows."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation_fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fraction * n))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def save_checkpoint(directory: str | os.PathLike[str], module: nn.Module,
                    meta: Mapping[str, Any]) -> Path:
    """Write ``model.safetensors`` (the state dict) and ``config.json`` (``meta``) atomically.

    Everything is checked before the first byte is written: non-finite weights (a diverged fit)
    or a ``meta`` that is not valid JSON raise :class:`CheckpointError` and leave no files.
    """
    out = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"not saving {out}: non-finite (NaN/inf) weights in {bad[:5]}; the "
                              "fit diverged, lower the learning rates")
    try:
        config_text = json.dumps(dict(meta), indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"not saving {out}: config is not valid JSON ({exc})") from None
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp))
    write_text(out / CONFIG_NAME, config_text)
    return out


def read_checkpoint_meta(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint written by :func:`save_checkpoint`: a JSON object, else
    :class:`CheckpointError` naming the file (missing, not UTF-8, not JSON, not an object)."""
    folder = Path(directory)
    config_file = folder / CONFIG_NAME
    if not config_file.is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise CheckpointError(f"{folder} is not a saved reward model (needs {CONFIG_NAME} and "
                              f"{WEIGHTS_NAME}); train one with `pluralign pal train`")
    try:
        meta = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        raise CheckpointError(f"{config_file}: not valid JSON ({reason}); the model folder is "
                              "damaged: train it again with `pluralign pal train`") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object with a 'class', got a "
                              f"{type(meta).__name__}; train the model again with `pluralign "
                              "pal train`")
    return meta


def load_checkpoint(directory: str | os.PathLike[str],
                    kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read a checkpoint written by :func:`save_checkpoint`, checking that it holds a ``kind``
    model; a damaged weights file raises :class:`CheckpointError` naming it."""
    folder = Path(directory)
    meta = read_checkpoint_meta(folder)
    if meta.get("class") != kind:
        raise CheckpointError(f"{folder} holds a {meta.get('class')!r}, not a {kind!r}")
    try:
        return meta, load_file(str(folder / WEIGHTS_NAME))
    except SafetensorError as exc:
        raise CheckpointError(f"{folder / WEIGHTS_NAME}: not a readable safetensors file "
                              f"({exc}); the model folder is damaged (truncated?): train it "
                              "again with `pluralign pal train`") from None
