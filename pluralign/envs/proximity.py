"""The discrete proximity environment with user types ([DAHP, §7.2], after [XU2024]).

States (prompts) ``x ∈ {0, …, S−1}`` and actions (responses) ``y ∈ {0, …, A−1}``, ``S = A = 40``.
Type ``u`` rewards a response by how close it is to its own optimum ``x + shift_u``:

    ``r_u(x, y) = scale_u · max(0, 1 − rate_u · d(y, x + shift_u))``,

``d`` the circular distance on ``{0, …, A−1}`` ("a circular distance, and f a linearly decreasing
function floored at zero"). Paper values: shifts (−10, 0, +10), rates (0.075, 0.1, 0.075), scales
(4, 1.5, 4), three equally represented types, Bradley–Terry annotators, uniform reference policy
and β = 1. With these, the average reward peaks at δ = y − x = ±10 (4/3 there versus 7/6 at δ=0),
while NBC (hence DPO) peaks at δ = 0; the infinite-data DPO optimum is 0.0437 away from π* in TV,
which pins down the circular distance and the floored linear decay (a non-circular distance
gives 0.0565, an unfloored decay 0.0224).

All sampling is vectorised with a NumPy ``Generator``: no Python loop runs per sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from pluralign.errors import ConfigError
from pluralign.social_choice import average_reward, dpo_limit, normalized_borda
from pluralign.validation import COUNT, NON_NEGATIVE, POSITIVE, check_fields, check_numbers


@dataclass
class ProximityConfig:
    """The environment's parameters (defaults: [DAHP, §7.2]).

    Attributes:
        num_states: number of prompts ``S``.
        num_actions: number of responses ``A`` (actions live on a circle of this size).
        shifts: per type, the offset ``y − x`` of the type's favourite response.
        rates: per type, the decay of reward per unit of circular distance.
        scales: per type, the reward at distance 0.
        type_probs: per type, the population share; ``None`` means equally represented.
        beta: KL-regularisation strength β of Eq. 1 (π* ∝ π_ref·exp(r̄/β)).
    """

    num_states: int = 40
    num_actions: int = 40
    shifts: tuple[int, ...] = (-10, 0, 10)
    rates: tuple[float, ...] = (0.075, 0.1, 0.075)
    scales: tuple[float, ...] = (4.0, 1.5, 4.0)
    type_probs: tuple[float, ...] | None = None
    beta: float = 1.0

    def __post_init__(self) -> None:
        check_fields(self, {"num_states": COUNT, "num_actions": {"minimum": 2, "integer": True},
                            "beta": POSITIVE})
        self.shifts = check_numbers(self.shifts, "ProximityConfig.shifts", integer=True)
        self.rates = check_numbers(self.rates, "ProximityConfig.rates", **NON_NEGATIVE)
        self.scales = check_numbers(self.scales, "ProximityConfig.scales")
        num_types = len(self.shifts)
        if num_types == 0 or len(self.rates) != num_types or len(self.scales) != num_types:
            raise ConfigError("shifts, rates and scales need one entry per type (same lengths), "
                              f"got {len(self.shifts)}, {len(self.rates)}, {len(self.scales)}")
        if self.type_probs is not None:
            probs = np.asarray(check_numbers(self.type_probs, "ProximityConfig.type_probs"))
            if probs.shape != (num_types,) or np.any(probs < 0) or not np.isclose(probs.sum(), 1):
                raise ConfigError(f"type_probs must be {num_types} nonnegative numbers summing "
                                  f"to 1, got {self.type_probs}")
            self.type_probs = tuple(float(p) for p in probs)


@dataclass
class Pairs:
    """Single-label preferences: annotator of type ``type`` preferred ``chosen`` at ``state``."""

    state: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    type: np.ndarray

    def __len__(self) -> int:
        return len(self.state)


@dataclass
class PairedPairs:
    """Two preferences per annotator (§5.3): ``first[i]`` and ``second[i]`` share a labeller."""

    first: Pairs
    second: Pairs

    def __len__(self) -> int:
        return len(self.first)


@dataclass
class FullInformation:
    """Every type labels every item (§6).

    ``labels[i, u]`` is True when type ``u`` preferred ``first[i]`` over ``second[i]``;
    ``agreement[i]`` is +1 (all chose ``first``), −1 (all chose ``second``) or 0.
    """

    state: np.ndarray
    first: np.ndarray
    second: np.ndarray
    labels: np.ndarray
    agreement: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        all_first, all_second = self.labels.all(axis=1), (~self.labels).all(axis=1)
        self.agreement = all_first.astype(np.int64) - all_second.astype(np.int64)

    def __len__(self) -> int:
        return len(self.state)


def circular_distance(a: np.ndarray, b: np.ndarray, size: int) -> np.ndarray:
    """``min(|a − b| mod size, size − |a − b| mod size)``."""
    diff = np.mod(np.asarray(a) - np.asarray(b), size)
    return np.minimum(diff, size - diff)


class ProximityEnv:
    """Rewards, exact reference policies and vectorised data generation for §7.2."""

    def __init__(self, config: ProximityConfig | None = None) -> None:
        self.config = config or ProximityConfig()
        cfg = self.config
        self.num_types = len(cfg.shifts)
        self.type_probs = (np.full(self.num_types, 1.0 / self.num_types) if cfg.type_probs is None
                           else np.asarray(cfg.type_probs, dtype=float))
        states = np.arange(cfg.num_states)[:, None]
        actions = np.arange(cfg.num_actions)[None, :]
        self.rewards = np.stack([
            scale * np.maximum(0.0, 1.0 - rate * circular_distance(actions, states + shift,
                                                                   cfg.num_actions))
            for shift, rate, scale in zip(cfg.shifts, cfg.rates, cfg.scales, strict=True)
        ])                                                             # [type, state, action]

    # -- exact quantities -------------------------------------------------------------------
    def _by_state(self) -> np.ndarray:
        return np.moveaxis(self.rewards, 0, 1)                         # [state, type, action]

    def average_reward(self) -> np.ndarray:
        """``r̄(x, y) = Σ_u p(u) r_u(x, y)``, ``[state, action]``."""
        return average_reward(self._by_state(), self.type_probs)

    def optimal_policy(self) -> np.ndarray:
        """π* ∝ π_ref · exp(r̄/β) with uniform π_ref (Eq. 10), ``[state, action]``."""
        logits = self.average_reward() / self.config.beta
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def nbc(self) -> np.ndarray:
        """NBC under uniform alternatives (Def. 4.1), ``[state, action]``."""
        return normalized_borda(self._by_state(), self.type_probs)

    def dpo_limit_policy(self) -> np.ndarray:
        """DPO's infinite-data optimum under uniform alternatives (§4.2), ``[state, action]``."""
        h = dpo_limit(self._by_state(), self.type_probs) / self.config.beta
        weights = np.exp(h - h.max(axis=1, keepdims=True))
        return weights / weights.sum(axis=1, keepdims=True)

    def preference_variance(self, state: np.ndarray, first: np.ndarray,
                            second: np.ndarray) -> np.ndarray:
        """Exact ``Var_u σ(r_u(first) − r_u(second))`` (the oracle of Lemma 5.3's estimand)."""
        probs = self._type_probs_first(state, first, second)          # [type, ...]
        mean = np.tensordot(self.type_probs, probs, axes=1)
        return np.maximum(np.tensordot(self.type_probs, probs**2, axes=1) - mean**2, 0.0)

    def _type_probs_first(self, state, first, second) -> np.ndarray:
        return expit(self.rewards[:, state, first] - self.rewards[:, state, second])

    # -- sampling (vectorised) --------------------------------------------------------------
    def _items(self, num: int, rng: np.random.Generator):
        cfg = self.config
        state = rng.integers(cfg.num_states, size=num)
        first = rng.integers(cfg.num_actions, size=num)
        second = rng.integers(cfg.num_actions, size=num)
        return state, first, second

    def _label(self, types, state, first, second, rng) -> Pairs:
        p_first = expit(self.rewards[types, state, first] - self.rewards[types, state, second])
        first_wins = rng.random(len(state)) < p_first
        return Pairs(state=state, chosen=np.where(first_wins, first, second),
                     rejected=np.where(first_wins, second, first), type=types)

    def sample_pairs(self, num: int, rng: np.random.Generator) -> Pairs:
        """``num`` anonymous-style preferences: uniform state and alternatives, random type, BT."""
        state, first, second = self._items(num, rng)
        types = rng.choice(self.num_types, size=num, p=self.type_probs)
        return self._label(types, state, first, second, rng)

    def sample_paired(self, num: int, rng: np.random.Generator,
                      repeat: bool = False) -> PairedPairs:
        """``num`` annotators, each labelling two items (§5.3).

        With ``repeat=False`` the two items are independent; with ``repeat=True`` the annotator
        labels the *same* item twice (two independent BT draws of one type), the design whose
        joint likelihood is tabular (see
        :func:`pluralign.reward.joint_likelihood.repeat_label_variance`).
        """
        types = rng.choice(self.num_types, size=num, p=self.type_probs)
        items = self._items(num, rng)
        first = self._label(types, *items, rng)
        second = self._label(types, *(items if repeat else self._items(num, rng)), rng)
        return PairedPairs(first=first, second=second)

    def sample_full_information(self, num: int, rng: np.random.Generator) -> FullInformation:
        """``num`` items, each labelled once by every type (§6)."""
        state, first, second = self._items(num, rng)
        p_first = self._type_probs_first(state, first, second).T        # [n, type]
        labels = rng.random(p_first.shape) < p_first
        return FullInformation(state=state, first=first, second=second, labels=labels)

    # -- views used by plots and metrics -----------------------------------------------------
    def roll(self, table: np.ndarray) -> np.ndarray:
        """Re-index ``table[state, action]`` by offset: ``out[x, k] = table[x, x + δ_k]``.

        Offsets ``δ`` run over :meth:`offsets` (``−A/2 … A/2 − 1``), so every state's row is
        centred on the state itself; the mean over rows is the 1-D representation of Fig. 3–4.
        """
        cfg = self.config
        actions = np.mod(np.arange(cfg.num_states)[:, None] + self.offsets()[None, :],
                         cfg.num_actions)
        return np.take_along_axis(table, actions, axis=1)

    def offsets(self) -> np.ndarray:
        """The offsets ``δ = y − x`` that :meth:`roll` puts on its columns."""
        half = self.config.num_actions // 2
        return np.arange(-half, self.config.num_actions - half)
