"""The social-choice layer's exception and the input checks its functions share."""

from __future__ import annotations

import numpy as np

from pluralign.errors import PluralignError


class SocialChoiceError(PluralignError, ValueError):
    """Rewards, type probabilities or sampling distributions that cannot define a Borda count."""


def check_probabilities(probs: np.ndarray, name: str, *, strictly_positive: bool = False) -> None:
    """Raise :class:`SocialChoiceError` unless ``probs`` is a distribution on its last axis."""
    if not np.all(np.isfinite(probs)):
        raise SocialChoiceError(f"{name} contains NaN or infinite values")
    if strictly_positive and np.any(probs <= 0):
        raise SocialChoiceError(
            f"{name} must be strictly positive (every option needs some sampling mass); "
            f"smallest value is {probs.min():.3g}"
        )
    if np.any(probs < 0):
        raise SocialChoiceError(f"{name} has negative entries (smallest {probs.min():.3g})")
    total = probs.sum(axis=-1)
    if not np.allclose(total, 1.0, atol=1e-8):
        worst = float(np.abs(total - 1.0).max())
        raise SocialChoiceError(
            f"{name} must sum to 1 over its last axis (off by up to {worst:.3g})"
        )


def check_rewards(rewards: np.ndarray, type_probs: np.ndarray) -> None:
    """``rewards[..., type, option]`` must be finite and match ``type_probs[..., type]``."""
    if rewards.ndim < 2:
        raise SocialChoiceError(
            f"rewards must have shape [..., type, option], got shape {rewards.shape}"
        )
    if not np.all(np.isfinite(rewards)):
        raise SocialChoiceError("rewards contain NaN or infinite values (floor zero shares first)")
    if type_probs.shape[-1] != rewards.shape[-2]:
        raise SocialChoiceError(
            f"type_probs has {type_probs.shape[-1]} types but rewards has {rewards.shape[-2]}"
        )
    check_probabilities(type_probs, "type_probs")
