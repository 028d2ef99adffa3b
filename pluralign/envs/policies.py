"""Policies over the proximity environment's discrete responses: tabular and a small MLP.

Both map every state to a distribution over actions and expose the full ``[state, action]``
log-probability table, which is all the pairwise losses need (the reference policy is uniform,
so ``log π_ref`` cancels in every margin).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pluralign.errors import ConfigError


class TabularPolicy(nn.Module):
    """One free logit per (state, action); starts at the uniform policy."""

    def __init__(self, num_states: int, num_actions: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_states, num_actions, dtype=torch.float64))

    def log_probs(self) -> Tensor:
        """``log π(a | x)`` as a ``[state, action]`` tensor."""
        return torch.log_softmax(self.logits, dim=-1)


class MLPPolicy(nn.Module):
    """A one-hidden-layer MLP from a one-hot state to action logits."""

    def __init__(self, num_states: int, num_actions: int, hidden: int = 64,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.num_states = num_states
        self.net = nn.Sequential(nn.Linear(num_states, hidden), nn.Tanh(),
                                 nn.Linear(hidden, num_actions)).double()
        with torch.no_grad():
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    bound = layer.in_features ** -0.5
                    layer.weight.uniform_(-bound, bound, generator=generator)
                    layer.bias.zero_()

    def log_probs(self) -> Tensor:
        """``log π(a | x)`` as a ``[state, action]`` tensor."""
        eye = torch.eye(self.num_states, dtype=torch.float64)
        return torch.log_softmax(self.net(eye), dim=-1)


def build_policy(kind: str, num_states: int, num_actions: int, hidden: int = 64,
                 seed: int = 0) -> TabularPolicy | MLPPolicy:
    """``kind`` is ``"tabular"`` or ``"mlp"``."""
    if kind == "tabular":
        return TabularPolicy(num_states, num_actions)
    if kind == "mlp":
        return MLPPolicy(num_states, num_actions, hidden,
                         generator=torch.Generator().manual_seed(seed))
    raise ConfigError(f"unknown policy {kind!r}; valid policies: tabular, mlp")
