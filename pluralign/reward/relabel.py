"""Relabel preference pairs with the type-weighted average reward ([DAHP, §6], indirect route).

"Learn personalized reward models for different user types, calculate a user-weighted expected
reward, and use it to relabel a preference dataset": with per-type rewards r_t and type
probabilities p(t), the average-reward margin of a pair is

    Δ̄(x, y_c, y_r) = Σ_t p(t) · (r_t(x, y_c) − r_t(x, y_r)),

and the pair is swapped when Δ̄ < 0, so that every ``chosen`` is the response the average reward
prefers. Any direct alignment method (DPO, MixDPO, ...) can then train on the relabeled dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from pluralign.errors import ConfigError

logger = logging.getLogger(__name__)


class TextRewardModel(Protocol):
    """Anything with ``score(prompts, responses) -> array of rewards``."""

    def score(self, prompts: Sequence[Any], responses: Sequence[Any]) -> np.ndarray: ...


def _aligned(models: Mapping[Any, TextRewardModel] | Sequence[TextRewardModel],
             type_probs: Mapping[Any, float] | Sequence[float]
             ) -> tuple[list[TextRewardModel], np.ndarray]:
    if isinstance(models, Mapping):
        if not isinstance(type_probs, Mapping):
            raise ConfigError("models is a mapping type -> model, so type_probs must map the same "
                              "types to probabilities")
        keys = [str(k) for k in models]
        probs_by_key = {str(k): float(v) for k, v in type_probs.items()}
        if set(keys) != set(probs_by_key):
            raise ConfigError(f"type_probs has types {sorted(probs_by_key)} but models has "
                              f"{sorted(keys)}; give one probability per model")
        ordered = list(models.values())
        probs = np.array([probs_by_key[k] for k in keys])
    else:
        ordered = list(models)
        probs = np.asarray(list(type_probs.values()) if isinstance(type_probs, Mapping)
                           else type_probs, dtype=float)
        if len(probs) != len(ordered):
            raise ConfigError(f"{len(ordered)} models but {len(probs)} type probabilities")
    if not ordered:
        raise ConfigError("relabeling needs at least one per-type reward model")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0) or abs(probs.sum() - 1.0) > 1e-6:
        raise ConfigError(f"type_probs must be non-negative and sum to 1, got {probs.tolist()}")
    return ordered, probs


def average_reward_margins(prompts: Sequence[Any], chosen: Sequence[Any], rejected: Sequence[Any],
                           models: Mapping[Any, TextRewardModel] | Sequence[TextRewardModel],
                           type_probs: Mapping[Any, float] | Sequence[float]) -> np.ndarray:
    """``Δ̄_i = Σ_t p(t)(r_t(x_i, chosen_i) − r_t(x_i, rejected_i))`` for every pair i."""
    ordered, probs = _aligned(models, type_probs)
    prompts, chosen, rejected = list(prompts), list(chosen), list(rejected)
    total = np.zeros(len(prompts))
    for model, p in zip(ordered, probs, strict=True):
        scores = np.asarray(model.score(prompts + prompts, chosen + rejected), dtype=float)
        total += p * (scores[:len(prompts)] - scores[len(prompts):])
    return total


def relabel_with_average_reward(dataset: Any,
                                models: Mapping[Any, TextRewardModel] | Sequence[TextRewardModel],
                                type_probs: Mapping[Any, float] | Sequence[float],
                                margin_columns: Sequence[str] = ("true_margin",)) -> Any:
    """Swap ``chosen``/``rejected`` wherever the type-averaged reward disagrees with the label.

    Args:
        dataset: a ``datasets.Dataset`` in the pluralign schema.
        models: per-type reward models (anything with ``score(prompts, responses)``), as a mapping
            ``type -> model`` or a sequence aligned with ``type_probs``.
        type_probs: p(t), non-negative, summing to 1.
        margin_columns: columns holding a chosen-minus-rejected quantity (e.g. the synthetic
            populations' ``true_margin``); they are negated on swapped pairs.

    Every column pair ``chosen<suffix>`` / ``rejected<suffix>`` (``chosen``/``rejected`` themselves,
    ``chosen_id``/``rejected_id``, ...) is swapped together.

    Returns:
        The dataset with pairs swapped where Δ̄ < 0, plus columns ``average_reward_margin`` (Δ̄ of
        the returned orientation, ≥ 0) and ``relabeled`` (True where the pair was swapped). The
        number of swapped pairs is ``sum(result["relabeled"])`` and is logged.
    """
    margins = average_reward_margins(dataset["prompt"], dataset["chosen"], dataset["rejected"],
                                     models, type_probs)
    flip = margins < 0
    columns = {}
    for name in dataset.column_names:
        partner = "rejected" + name[len("chosen"):] if name.startswith("chosen") else None
        if partner in dataset.column_names:
            first, second = list(dataset[name]), list(dataset[partner])
            columns[name] = [b if f else a for a, b, f in zip(first, second, flip, strict=True)]
            columns[partner] = [a if f else b for a, b, f in zip(first, second, flip, strict=True)]
    for name in margin_columns:
        if name in dataset.column_names:
            values = np.asarray(dataset[name], dtype=float)
            columns[name] = np.where(flip, -values, values).tolist()
    columns["average_reward_margin"] = np.abs(margins).tolist()
    columns["relabeled"] = flip.tolist()
    out = dataset.remove_columns([c for c in columns if c in dataset.column_names])
    for name, values in columns.items():
        out = out.add_column(name, values)
    logger.info("relabel_with_average_reward: swapped %d of %d pairs", int(flip.sum()), len(flip))
    order = list(dataset.column_names) + [c for c in ("average_reward_margin", "relabeled")
                                          if c not in dataset.column_names]
    return out.select_columns(order)
