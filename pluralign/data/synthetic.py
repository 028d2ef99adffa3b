"""Synthetic preference populations with known ground truth (the embedded default data).

Generative model ([MixDPO, §3] mixed-logit Bradley–Terry [BRADLEY-TERRY]; [DAHP, §2] user types):

* **Items.** ``n_prompts`` value-laden prompts ("Should companies use AI to screen job
  applicants?"), each with ``responses_per_prompt`` English responses composed of 1–3 sentences,
  each arguing one *consideration* (efficiency, fairness, privacy, …) at an intensity level
  ℓ ∈ {1, 2, 3}. A response's feature vector is ``x[k] = ℓ_k / 3`` for the considerations it
  argues, else 0.
* **Types.** ``n_types`` latent user types with value weights
  ``w_t = s · unit(unit(m) + τ · unit(z_t))`` (``m``, ``z_t`` standard normal, τ = ``type_spread``,
  s = ``reward_scale``); the reward of a response for type t is ``r_t(y) = w_t · x(y)``. τ = 0
  gives identical types (no direction heterogeneity).
* **Annotators.** Demographics drawn independently from the ``demographics`` marginals; the type
  is drawn from ``softmax(log type_probs + demographic_signal · Σ_a E_a[value_a, t])`` with a
  seeded table ``E_a`` of standard-normal effects, so types correlate with demographics.
  Preference strength β_i ~ point mass / LogNormal(μ, σ) / Gamma(k, rate λ) (``strength``).
* **Chat form** (``chat=True``, the loaders' option of the same name): the same texts as TRL
  conversational messages, the prompt ``[{"role": "user", "content": question}]`` and each
  response ``[{"role": "assistant", "content": answer}]`` (without the string form's leading
  space), for a chat model's own template. Everything random (items, types, annotators, pairs,
  labels) is the same as in the string form for the same seed.
* **Labels.** Each annotator compares ``pairs_per_annotator`` random response pairs (a, b) of
  random prompts; ``P(a ≻ b) = σ(β_i · (r_t(a) − r_t(b)))`` (mixed-logit BT, [MixDPO, Eq. 3]
  with β_i per annotator). ``chosen`` is whichever response won.
* **Exact composition** (off by default): ``exact_type_shares`` replaces the per-annotator type
  draw by exactly ``round(n_annotators · type_probs)`` annotators per type; ``conflict_share``
  (two types) draws exactly that share of the pairs from items the two types order oppositely
  and the rest from items they agree on, instead of uniformly.

The **homogeneous control** (``homogeneous=True``) keeps the same prompts, responses, annotators,
compared pairs and uniform draws for the same seed, but has one type whose weights are the
heterogeneous population's type-share-weighted average ``Σ_t p_t w_t`` (so its reward is the
average reward, the target of [DAHP, §3]) and constant β equal to the mean of the strength
distribution.

Every random quantity comes from its own stream ``numpy.random.default_rng([seed, stream, ...])``,
so changing one knob does not reshuffle the others, and pairs are generated in fixed-size chunks
with per-chunk streams: the output is identical for a seed whatever the machine. Text columns are
built by Arrow ``take`` from the finite sets of prompt/response strings (no Python loop per pair);
``bench/data.py`` measures speed and peak memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pluralign.data.schema import (
    dataset_from_table,
    encode_mapping,
    mapping_array,
    parquet_table,
    validate,
)
from pluralign.errors import ConfigError
from pluralign.io import atomic_path, write_json
from pluralign.validation import COUNT, INDEX, NON_NEGATIVE, POSITIVE, check_fields

TEMPLATES_RESOURCE = "synthetic_templates.json"


def _load_templates() -> dict[str, Any]:
    """The text templates (claims, topics, frames, ...) shipped in ``pluralign/resources``."""
    text = resources.files("pluralign").joinpath("resources", TEMPLATES_RESOURCE).read_text(
        encoding="utf-8")
    return json.loads(text)


_TEMPLATES = _load_templates()
CONSIDERATIONS: tuple[str, ...] = tuple(_TEMPLATES["considerations"])
# Two natural-language claims per consideration; {who} is the prompt's actor.
_CLAIMS: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in _TEMPLATES["claims"].items()}
_WEIGHT_PHRASES: tuple[str, ...] = tuple(_TEMPLATES["weight_phrases"])
_COMPACT_LEVELS: tuple[str, ...] = tuple(_TEMPLATES["compact_levels"])
_OPENERS: tuple[str, ...] = tuple(_TEMPLATES["openers"])
# (domain, actor, action): the prompt asks whether the actor should do the action.
_TOPICS: tuple[tuple[str, str, str], ...] = tuple(tuple(t) for t in _TEMPLATES["topics"])
_FRAMES: tuple[str, ...] = tuple(_TEMPLATES["frames"])
_SETTINGS: tuple[str, ...] = tuple(_TEMPLATES["settings"])
DEFAULT_DEMOGRAPHICS: dict[str, dict[str, float]] = _TEMPLATES["demographics"]

(_STREAM_ITEMS, _STREAM_TYPES, _STREAM_ANNOTATORS, _STREAM_BETA, _STREAM_PAIRS,
 _STREAM_EXACT) = range(6)
CHUNK_SIZE = 1 << 16
STRENGTH_FAMILIES = ("point", "lognormal", "gamma")


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


@dataclass
class PopulationConfig:
    """Knobs of a synthetic population. Defaults give ~4k pairs with 3 types and LogNormal β.

    Attributes:
        n_annotators: number of annotators (users).
        n_prompts: number of prompts; texts repeat after 1,200 but item ids stay distinct.
        pairs_per_annotator: comparisons per annotator; total pairs = n_annotators × this.
        responses_per_prompt: candidate responses per prompt (≥ 2); pairs are drawn among them.
        n_types: number of latent user types (value-weight vectors).
        type_spread: direction heterogeneity τ ≥ 0; 0 makes all types identical.
        type_probs: base type shares before the demographic tilt (None = uniform).
        reward_scale: norm of every type's weight vector (scales reward differences).
        strength: β family, "point" | "lognormal" | "gamma".
        beta: β of the point mass.
        mu, sigma: LogNormal parameters of β = exp(μ + σ ε).
        shape, rate: Gamma parameters of β (mean shape / rate).
        demographics: attribute -> {value: probability} marginals (None = PRISM-like defaults
            over age, gender, education, employment_status).
        demographic_signal: how strongly demographics predict the type (0 = independent).
        homogeneous: the control population (one type = average weights, constant β = mean β).
        text_style: "natural" (varied English sentences) or "compact" (one short sentence per
            consideration whose distinctive word is the consideration's name, e.g. "Fairness matters
            most." — an easy lexical signal for a tiny language model).
        chat: prompts and responses as chat messages (TRL conversational format; see the module
            docstring) instead of strings; same latent structure and labels.
        exact_type_shares: assign exactly ``round(n_annotators · type_probs)`` annotators to
            each type (largest remainder), in a seeded random order, instead of drawing each
            annotator's type; needs ``demographic_signal = 0``.
        conflict_share: two types only: exactly ``round(conflict_share · n_pairs)`` compared
            pairs (at seeded random positions) are items on which the types' rewards disagree
            in sign (:func:`type_conflict`), the rest items on which they agree; None draws
            every pair's item uniformly.
        seed: seed of every random stream.
    """

    n_annotators: int = 200
    n_prompts: int = 100
    pairs_per_annotator: int = 20
    responses_per_prompt: int = 4
    n_types: int = 3
    type_spread: float = 1.0
    type_probs: list[float] | None = None
    reward_scale: float = 3.0
    strength: str = "lognormal"
    beta: float = 1.0
    mu: float = 0.0
    sigma: float = 0.6
    shape: float = 2.0
    rate: float = 2.0
    demographics: dict[str, dict[str, float]] | None = None
    demographic_signal: float = 1.0
    homogeneous: bool = False
    text_style: str = "natural"
    chat: bool = False
    exact_type_shares: bool = False
    conflict_share: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, {
            **dict.fromkeys(("n_annotators", "n_prompts", "pairs_per_annotator", "n_types"),
                            COUNT),
            "responses_per_prompt": {"minimum": 2, "integer": True},
            **dict.fromkeys(("type_spread", "demographic_signal", "reward_scale"), NON_NEGATIVE),
            "mu": {},
            **dict.fromkeys(("beta", "sigma", "shape", "rate"), POSITIVE),
            "seed": INDEX,
        })
        if self.strength not in STRENGTH_FAMILIES:
            raise ConfigError(f"PopulationConfig.strength must be one of {STRENGTH_FAMILIES}, "
                              f"got {self.strength!r}")
        if self.text_style not in ("natural", "compact"):
            raise ConfigError(f"PopulationConfig.text_style must be 'natural' or 'compact', "
                              f"got {self.text_style!r}")
        if not isinstance(self.chat, bool):
            raise ConfigError(f"PopulationConfig.chat must be true or false, got {self.chat!r}")
        if self.exact_type_shares and self.demographic_signal != 0:
            raise ConfigError("PopulationConfig.exact_type_shares needs demographic_signal: 0 "
                              f"(types fixed by share, not tilted), got {self.demographic_signal}")
        if self.conflict_share is not None and (self.n_types != 2
                                                or not 0 <= self.conflict_share <= 1):
            raise ConfigError("PopulationConfig.conflict_share needs n_types: 2 and a share in "
                              f"[0, 1], got n_types={self.n_types}, "
                              f"conflict_share={self.conflict_share!r}")
        if self.type_probs is not None:
            probs = np.asarray(self.type_probs, dtype=float)
            if probs.shape != (self.n_types,) or (probs < 0).any() or not probs.sum() > 0:
                raise ConfigError(f"PopulationConfig.type_probs needs {self.n_types} non-negative "
                                  f"weights, got {self.type_probs}")
        for attr, marginal in (self.demographics or {}).items():
            if not marginal or any(not p >= 0 for p in marginal.values()) \
                    or not sum(marginal.values()) > 0:
                raise ConfigError(f"PopulationConfig.demographics[{attr!r}] needs non-negative "
                                  "probabilities with a positive sum")

    @property
    def n_pairs(self) -> int:
        """Total number of compared pairs."""
        return self.n_annotators * self.pairs_per_annotator

    def strength_params(self) -> dict[str, float]:
        """Raw parameters of the β distribution, named as ``StrengthDistribution.params()``."""
        names = {"point": ("beta",), "lognormal": ("mu", "sigma"), "gamma": ("shape", "rate")}
        return {n: float(getattr(self, n)) for n in names[self.strength]}

    def strength_mean(self) -> float:
        """E[β]: β, exp(μ + σ²/2) or shape/rate."""
        if self.strength == "point":
            return float(self.beta)
        if self.strength == "lognormal":
            return math.exp(self.mu + self.sigma ** 2 / 2)
        return self.shape / self.rate

    def homogeneous_control(self) -> PopulationConfig:
        """This configuration's homogeneous control (same seed, sizes, prompts and responses)."""
        return dataclasses.replace(self, homogeneous=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (YAML/JSON friendly); ``PopulationConfig(**d)`` restores it."""
        return dataclasses.asdict(self)


@dataclass
class PopulationTruth:
    """Ground truth of a population: what the data were generated from.

    Attributes:
        considerations: names of the feature dimensions.
        type_weights: (n_types, K) value weights w_t.
        type_probs: (n_types,) share of annotators of each type.
        features: (n_responses, K) response features x; response id = prompt_id × R + slot.
        response_prompt: (n_responses,) prompt id of each response.
        annotator_ids: annotator id strings, index = annotator index.
        annotator_type: (n_annotators,) type of each annotator.
        annotator_beta: (n_annotators,) preference strength β_i.
        strength: β family; strength_params: its raw parameters.
    """

    considerations: tuple[str, ...]
    type_weights: np.ndarray
    type_probs: np.ndarray
    features: np.ndarray
    response_prompt: np.ndarray
    annotator_ids: list[str]
    annotator_type: np.ndarray
    annotator_beta: np.ndarray
    strength: str
    strength_params: dict[str, float] = field(default_factory=dict)

    @property
    def n_types(self) -> int:
        return int(self.type_weights.shape[0])

    def type_rewards(self, response_ids: Any = None) -> np.ndarray:
        """(n_types, n) rewards r_t(y) = w_t · x(y) of the given response ids (all when None)."""
        feats = self.features if response_ids is None else self.features[np.asarray(response_ids)]
        return self.type_weights @ feats.T

    def average_reward(self, response_ids: Any = None) -> np.ndarray:
        """Σ_t p_t r_t(y): the type-share-weighted average reward ([DAHP, §3] target)."""
        return self.type_probs @ self.type_rewards(response_ids)

    def annotator_index(self) -> dict[str, int]:
        """annotator id -> index into ``annotator_type`` / ``annotator_beta``."""
        return {a: i for i, a in enumerate(self.annotator_ids)}


@dataclass
class Population:
    """A generated population: schema dataset + ground truth + the item texts.

    ``prompts`` and ``responses`` are the plain-string texts (with ``chat=True`` the dataset holds
    them as message lists, each response's content without its leading space).
    """

    config: PopulationConfig
    dataset: datasets.Dataset
    truth: PopulationTruth
    prompts: list[str]
    prompt_context: list[dict[str, str]]
    responses: list[str]
    annotator_attributes: list[dict[str, str]]

    def type_rewards(self, response_ids: Any = None) -> np.ndarray:
        """Shortcut for ``truth.type_rewards``."""
        return self.truth.type_rewards(response_ids)

    def text_arrays(self) -> tuple[pa.Array, pa.Array]:
        """Arrow arrays of the prompt and response texts (index = prompt id / response id) in the
        dataset's form: strings, or with ``config.chat`` one-message lists."""
        return _text_arrays(self.prompts, self.responses, self.config.chat)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``pairs.parquet`` (the dataset), ``responses.parquet``, ``prompts.parquet``,
        ``annotators.parquet`` and ``truth.json`` (config, type weights and shares, strength).

        Each file is written atomically; :func:`load_population` reads the folder back.
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        t = self.truth
        with atomic_path(out / "pairs.parquet") as tmp:
            pq.write_table(parquet_table(self.dataset), tmp)
        responses = pd.DataFrame({"response_id": np.arange(len(self.responses)),
                                  "prompt_id": t.response_prompt, "text": self.responses})
        for k, name in enumerate(t.considerations):
            responses[f"x.{name}"] = t.features[:, k]
        prompts = pd.DataFrame({"prompt_id": np.arange(len(self.prompts)), "text": self.prompts,
                                "context": [encode_mapping(c) for c in self.prompt_context]})
        annotators = pd.DataFrame({"annotator_id": t.annotator_ids, "type_id": t.annotator_type,
                                   "beta": t.annotator_beta,
                                   "attributes": [encode_mapping(a)
                                                  for a in self.annotator_attributes]})
        for name, frame in (("responses", responses), ("prompts", prompts),
                            ("annotators", annotators)):
            with atomic_path(out / f"{name}.parquet") as tmp:
                frame.to_parquet(tmp, index=False)
        write_json(out / "truth.json", {
            "config": self.config.to_dict(), "considerations": list(t.considerations),
            "type_weights": t.type_weights.tolist(), "type_probs": t.type_probs.tolist(),
            "strength": t.strength, "strength_params": t.strength_params,
        })
        return out


def load_population(directory: str | os.PathLike[str]) -> Population:
    """Read a folder written by :meth:`Population.save`."""
    src = Path(directory)
    if not (src / "truth.json").is_file():
        raise ConfigError(f"{directory}: not a saved synthetic population (no truth.json); write "
                          "one with `pluralign data synthetic --output-dir DIR`")
    meta = json.loads((src / "truth.json").read_text(encoding="utf-8"))
    responses = pd.read_parquet(src / "responses.parquet")
    prompts = pd.read_parquet(src / "prompts.parquet")
    annotators = pd.read_parquet(src / "annotators.parquet")
    considerations = tuple(meta["considerations"])
    truth = PopulationTruth(
        considerations=considerations,
        type_weights=np.asarray(meta["type_weights"], dtype=float),
        type_probs=np.asarray(meta["type_probs"], dtype=float),
        features=responses[[f"x.{c}" for c in considerations]].to_numpy(dtype=float),
        response_prompt=responses["prompt_id"].to_numpy(),
        annotator_ids=annotators["annotator_id"].tolist(),
        annotator_type=annotators["type_id"].to_numpy(),
        annotator_beta=annotators["beta"].to_numpy(dtype=float),
        strength=meta["strength"], strength_params=meta["strength_params"],
    )
    dataset = validate(dataset_from_table(pq.read_table(src / "pairs.parquet")), source=str(src))
    return Population(
        config=PopulationConfig(**meta["config"]), dataset=dataset, truth=truth,
        prompts=prompts["text"].tolist(),
        prompt_context=[json.loads(c) for c in prompts["context"]],
        responses=responses["text"].tolist(),
        annotator_attributes=[json.loads(a) for a in annotators["attributes"]],
    )


def _make_prompts(config: PopulationConfig) -> tuple[list[str], list[dict[str, str]], list[str]]:
    """Prompt texts, their contexts and actors; combinations in a seeded order, cycled if needed."""
    combos = len(_TOPICS) * len(_FRAMES) * len(_SETTINGS)
    order = _rng(config.seed, _STREAM_ITEMS, 0).permutation(combos)
    texts, contexts, actors = [], [], []
    for p in range(config.n_prompts):
        c = int(order[p % combos])
        topic, rest = divmod(c, len(_FRAMES) * len(_SETTINGS))
        frame, setting = divmod(rest, len(_SETTINGS))
        domain, who, action = _TOPICS[topic]
        text = _FRAMES[frame].format(who=who, action=action + _SETTINGS[setting])
        texts.append(text[0].upper() + text[1:])
        contexts.append({"domain": domain})
        actors.append(who)
    return texts, contexts, actors


def _response_text(config: PopulationConfig, used: np.ndarray, levels: np.ndarray,
                   variants: np.ndarray, opener: int, who: str) -> str:
    if config.text_style == "compact":
        parts = [f"{CONSIDERATIONS[c].capitalize()} matters {_COMPACT_LEVELS[levels[c] - 1]}."
                 for c in used]
    else:
        parts = [_OPENERS[opener]] + [
            _CLAIMS[CONSIDERATIONS[c]][variants[c]].format(who=who)
            + f", and that is {_WEIGHT_PHRASES[levels[c] - 1]}." for c in used]
    return " " + " ".join(parts)  # leading space: TRL's standard prompt + completion convention


def _make_responses(config: PopulationConfig, actors: list[str]) -> tuple[np.ndarray, list[str]]:
    """Features (n_prompts·R, K) and texts of every response, built from considerations.

    A response whose text or features repeat another response of the same prompt is redrawn, so
    every compared pair has two different texts and a non-degenerate feature difference.
    """
    rng = _rng(config.seed, _STREAM_ITEMS, 1)
    n, k = config.n_prompts * config.responses_per_prompt, len(CONSIDERATIONS)
    n_args = rng.integers(1, 4, size=n)
    ranks = np.argsort(rng.random((n, k)), axis=1)  # random order of considerations per response
    levels = rng.integers(1, 4, size=(n, k))
    variants = rng.integers(0, 2, size=(n, k))
    openers = rng.integers(0, len(_OPENERS), size=n)
    features = np.zeros((n, k))
    texts: list[str] = []
    seen: set[str] = set()
    for r in range(n):
        if r % config.responses_per_prompt == 0:
            seen = set()
        who = actors[r // config.responses_per_prompt]
        while True:
            used = ranks[r, : n_args[r]]
            features[r] = 0.0
            features[r, used] = levels[r, used] / 3.0
            text = _response_text(config, used, levels[r], variants[r], openers[r], who)
            key = features[r].tobytes()
            if text not in seen and key not in seen:
                break
            n_args[r], ranks[r], levels[r] = (rng.integers(1, 4), rng.permutation(k),
                                              rng.integers(1, 4, size=k))
        seen.update((text, key))
        texts.append(text)
    return features, texts


def _make_types(config: PopulationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Type weights (T, K) and base shares (T,)."""
    rng = _rng(config.seed, _STREAM_TYPES)
    k = len(CONSIDERATIONS)
    base = rng.standard_normal(k)
    z = rng.standard_normal((config.n_types, k))
    unit = base / np.linalg.norm(base)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused below
        raw = unit + config.type_spread * z / np.linalg.norm(z, axis=1, keepdims=True)
        norm = np.linalg.norm(raw, axis=1, keepdims=True)
        weights = config.reward_scale * raw / norm
    if not (np.isfinite(norm).all() and np.isfinite(weights).all()):
        raise ConfigError(f"PopulationConfig: type_spread={config.type_spread:g} and "
                          f"reward_scale={config.reward_scale:g} overflow the type weights; use "
                          "values of a sensible size (e.g. below 1e100)")
    probs = np.full(config.n_types, 1.0 / config.n_types) if config.type_probs is None \
        else np.asarray(config.type_probs, dtype=float) / np.sum(config.type_probs)
    return weights, probs


def _make_annotators(config: PopulationConfig, base_probs: np.ndarray
                     ) -> tuple[list[dict[str, str]], np.ndarray]:
    """Demographics from the marginals and types tilted by demographics (softmax of effects)."""
    rng = _rng(config.seed, _STREAM_ANNOTATORS)
    marginals = DEFAULT_DEMOGRAPHICS if config.demographics is None else config.demographics
    n = config.n_annotators
    logits = np.tile(np.log(np.maximum(base_probs, 1e-300)), (n, 1))
    columns = {}
    for attr, marginal in marginals.items():
        values = list(marginal)
        probs = np.asarray([marginal[v] for v in values], dtype=float)
        idx = rng.choice(len(values), size=n, p=probs / probs.sum())
        effects = rng.standard_normal((len(values), config.n_types))
        logits += config.demographic_signal * effects[idx]
        columns[attr] = np.asarray(values, dtype=object)[idx]
    gumbel = rng.gumbel(size=logits.shape)
    types = np.argmax(logits + gumbel, axis=1)  # Gumbel-max = a draw from softmax(logits)
    if config.exact_type_shares:
        types = _exact_types(config, base_probs)
    attributes = [{a: str(columns[a][i]) for a in columns} for i in range(n)]
    return attributes, types


def exact_counts(total: int, probs: np.ndarray) -> np.ndarray:
    """``total`` split by ``probs`` into integers summing to ``total`` (largest remainder;
    ties to the lower index)."""
    quota = total * np.asarray(probs, dtype=float) / np.sum(probs)
    counts = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[:total - counts.sum()]] += 1
    return counts


def _exact_types(config: PopulationConfig, base_probs: np.ndarray) -> np.ndarray:
    """Exactly :func:`exact_counts` annotators per type, in a seeded random order."""
    counts = exact_counts(config.n_annotators, base_probs)
    rng = _rng(config.seed, _STREAM_EXACT, 0)
    return rng.permutation(np.repeat(np.arange(config.n_types), counts))


def type_conflict(rewards: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pair (a, b): +1 where two types' rewards ``rewards[2, response]`` order a and b
    oppositely (the item is contested), −1 where they agree strictly, 0 where either ties."""
    product = (rewards[0, a] - rewards[0, b]) * (rewards[1, a] - rewards[1, b])
    return -np.sign(product).astype(np.int64)


def _conflict_items(config: PopulationConfig, rewards: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt, slot_a, slot_b) of every pair for ``conflict_share``: exactly
    ``round(share · n_pairs)`` pairs, at seeded random positions, draw their item uniformly from
    the contested items (:func:`type_conflict` = +1), the others from the agreed ones (−1)."""
    r = config.responses_per_prompt
    lo, hi = np.triu_indices(r, k=1)
    prompt = np.repeat(np.arange(config.n_prompts), lo.size)
    lo, hi = np.tile(lo, config.n_prompts), np.tile(hi, config.n_prompts)
    kind = type_conflict(rewards, prompt * r + lo, prompt * r + hi)
    n = config.n_pairs
    n_conflict = int(round(config.conflict_share * n))
    rng = _rng(config.seed, _STREAM_EXACT, 1)
    wanted = rng.permutation(np.repeat([1, -1], [n_conflict, n - n_conflict]))
    pick = np.empty(n, dtype=np.int64)
    for flag, name in ((1, "contested"), (-1, "agreed")):
        pool, slots = np.flatnonzero(kind == flag), np.flatnonzero(wanted == flag)
        if slots.size and not pool.size:
            raise ConfigError(f"conflict_share={config.conflict_share} needs {name} items, but "
                              "the two types order every response pair the other way; change "
                              "type_spread or the seed")
        pick[slots] = pool[rng.integers(0, max(pool.size, 1), size=slots.size)]
    swap = rng.random(n) < 0.5
    lo, hi = lo[pick], hi[pick]
    return prompt[pick], np.where(swap, hi, lo), np.where(swap, lo, hi)


def _sample_beta(config: PopulationConfig) -> np.ndarray:
    rng = _rng(config.seed, _STREAM_BETA)
    n = config.n_annotators
    if config.homogeneous:
        return np.full(n, config.strength_mean())
    if config.strength == "point":
        return np.full(n, float(config.beta))
    if config.strength == "lognormal":
        return np.exp(config.mu + config.sigma * rng.standard_normal(n))
    return rng.gamma(config.shape, 1.0 / config.rate, size=n)


def _pair_chunk(config: PopulationConfig, start: int, stop: int, rewards: np.ndarray,
                annotator_type: np.ndarray, beta: np.ndarray,
                items: tuple[np.ndarray, ...] | None = None) -> dict[str, np.ndarray]:
    """Pairs ``start:stop`` (annotator-major order) and BT labels, from a per-chunk stream;
    ``items`` (:func:`_conflict_items`) replaces the uniform draw of (prompt, slot a, slot b)."""
    rng = _rng(config.seed, _STREAM_PAIRS, start // CHUNK_SIZE)
    m, r = stop - start, config.responses_per_prompt
    annotator = np.arange(start, stop) // config.pairs_per_annotator
    prompt = rng.integers(0, config.n_prompts, size=m)
    slot_a = rng.integers(0, r, size=m)
    slot_b = (slot_a + 1 + rng.integers(0, r - 1, size=m)) % r
    u = rng.random(m)
    if items is not None:
        prompt, slot_a, slot_b = (column[start:stop] for column in items)
    resp_a, resp_b = prompt * r + slot_a, prompt * r + slot_b
    types = annotator_type[annotator]
    diff = rewards[types, resp_a] - rewards[types, resp_b]
    b = beta[annotator]
    a_wins = u < 1.0 / (1.0 + np.exp(-b * diff))
    chosen = np.where(a_wins, resp_a, resp_b)
    rejected = np.where(a_wins, resp_b, resp_a)
    return {"annotator": annotator, "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "lo": np.minimum(slot_a, slot_b), "hi": np.maximum(slot_a, slot_b), "type": types,
            "beta": b, "margin": np.where(a_wins, diff, -diff)}


def _text_arrays(prompts: list[str], responses: list[str], chat: bool
                 ) -> tuple[pa.Array, pa.Array]:
    """Prompts and responses as Arrow string arrays, or (``chat``) as one-message lists
    ``[{"role": "user" | "assistant", "content": text}]`` with surrounding whitespace removed."""
    if not chat:
        return pa.array(prompts), pa.array(responses)
    def messages(role: str, texts: list[str]) -> pa.Array:
        return pa.array([[{"role": role, "content": t.strip()}] for t in texts])

    return messages("user", prompts), messages("assistant", responses)


def _chunk_table(c: dict[str, np.ndarray], texts: dict[str, pa.Array]) -> pa.Table:
    def take(name: str, idx: np.ndarray) -> pa.Array:
        return pc.take(texts[name], pa.array(idx))

    item_id = pc.binary_join_element_wise(
        "p", pa.array(c["prompt"]).cast(pa.string()), ":r", pa.array(c["lo"]).cast(pa.string()),
        "-", pa.array(c["hi"]).cast(pa.string()), "")
    return pa.table({
        "prompt": take("prompts", c["prompt"]),
        "chosen": take("responses", c["chosen"]),
        "rejected": take("responses", c["rejected"]),
        "annotator_id": take("annotators", c["annotator"]),
        "attributes": take("attributes", c["annotator"]),
        "context": take("contexts", c["prompt"]),
        "item_id": item_id,
        "type_id": pa.array(c["type"].astype(np.int32)),
        "true_beta": pa.array(c["beta"]),
        "true_margin": pa.array(c["margin"]),
        "prompt_id": pa.array(c["prompt"].astype(np.int32)),
        "chosen_id": pa.array(c["chosen"].astype(np.int32)),
        "rejected_id": pa.array(c["rejected"].astype(np.int32)),
    })


def make_population(config: PopulationConfig | None = None, **overrides: Any) -> Population:
    """Generate a population (see the module docstring for the model); deterministic by seed.

    ``make_population(n_types=1)`` is short for ``make_population(PopulationConfig(n_types=1))``.
    The dataset has the schema columns plus ground truth per pair: ``type_id``, ``true_beta``,
    ``true_margin`` (= r_t(chosen) − r_t(rejected) for the annotator's type, before β), and the
    integer ids ``prompt_id``, ``chosen_id``, ``rejected_id`` indexing ``truth.features``.
    """
    config = dataclasses.replace(config or PopulationConfig(), **overrides)
    prompts, contexts, actors = _make_prompts(config)
    features, responses = _make_responses(config, actors)
    weights, base_probs = _make_types(config)
    attributes, types = _make_annotators(config, base_probs)
    shares = np.bincount(types, minlength=config.n_types) / config.n_annotators
    items = None if config.conflict_share is None else \
        _conflict_items(config, weights @ features.T)
    if config.homogeneous:
        weights, shares, types = (shares @ weights)[None, :], np.ones(1), np.zeros_like(types)
    beta = _sample_beta(config)
    annotator_ids = [f"a{i:05d}" for i in range(config.n_annotators)]
    with np.errstate(over="ignore", invalid="ignore"):
        rewards = weights @ features.T
    if not np.isfinite(rewards).all():
        raise ConfigError(f"PopulationConfig: reward_scale={config.reward_scale:g} overflows the "
                          "type rewards (they are not finite); use a value of a sensible size "
                          "(e.g. below 1e100)")
    prompt_texts, response_texts = _text_arrays(prompts, responses, config.chat)
    texts = {"prompts": prompt_texts, "responses": response_texts,
             "annotators": pa.array(annotator_ids),
             "attributes": mapping_array(attributes), "contexts": mapping_array(contexts)}
    tables = [
        _chunk_table(_pair_chunk(config, start, min(start + CHUNK_SIZE, config.n_pairs), rewards,
                                 types, beta, items), texts)
        for start in range(0, config.n_pairs, CHUNK_SIZE)
    ]
    fingerprint = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()
    dataset = validate(dataset_from_table(pa.concat_tables(tables), fingerprint[:16]),
                       source="synthetic population")
    truth = PopulationTruth(
        considerations=CONSIDERATIONS, type_weights=weights, type_probs=shares, features=features,
        response_prompt=np.repeat(np.arange(config.n_prompts), config.responses_per_prompt),
        annotator_ids=annotator_ids, annotator_type=types, annotator_beta=beta,
        strength="point" if config.homogeneous else config.strength,
        strength_params={"beta": config.strength_mean()} if config.homogeneous
        else config.strength_params(),
    )
    return Population(config=config, dataset=dataset, truth=truth, prompts=prompts,
                      prompt_context=contexts, responses=responses,
                      annotator_attributes=attributes)
