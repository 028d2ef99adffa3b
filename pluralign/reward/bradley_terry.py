"""Bradley–Terry reward model: a small trainable head on frozen (prompt, response) embeddings.

``r(x, y) = MLP([e(x); e(y)])`` where ``e`` is a frozen
:class:`~pluralign.reward.encoders.ItemEncoder`; trained by maximum likelihood under P(y_w ≻ y_l |
x) = σ(r(x, y_w) − r(x, y_l)). Also per-group models (one per annotator type), the ingredient of the
relabeling route of [DAHP, §6].
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pluralign.config import config_from_dict
from pluralign.errors import ConfigError
from pluralign.reward.base import (
    RewardTrainingConfig,
    bradley_terry_loss,
    fit_minibatch,
    holdout_split,
    load_checkpoint,
    mlp,
    pairwise_accuracy,
    save_checkpoint,
)
from pluralign.reward.encoders import (
    EncoderError,
    ItemEncoder,
    PairEmbeddings,
    build_encoder,
    embed_pairs,
)
from pluralign.validation import POSITIVE, check_fields


@dataclass
class BradleyTerryConfig(RewardTrainingConfig):
    """Training recipe of :class:`BradleyTerryRewardModel` (the shared fields are
    :class:`~pluralign.reward.base.RewardTrainingConfig`'s).

    Attributes:
        hidden_dim: width of the head's hidden layer; 0 gives a linear reward on the embeddings.
        lr: AdamW learning rate.
    """

    lr: float = 3e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, {"lr": POSITIVE})


class BradleyTerryRewardModel(nn.Module):
    """Scalar reward ``r(x, y) = head([e(x); e(y)])`` on frozen embeddings of dimension
    ``embed_dim``."""

    kind = "BradleyTerryRewardModel"

    def __init__(self, embed_dim: int, config: BradleyTerryConfig | None = None,
                 encoder: ItemEncoder | None = None) -> None:
        super().__init__()
        self.config = config or BradleyTerryConfig()
        self.embed_dim = embed_dim
        self.encoder = encoder
        torch.manual_seed(self.config.seed)
        self.head = mlp(2 * embed_dim, self.config.hidden_dim, 1)

    def forward(self, prompt_emb: torch.Tensor, response_emb: torch.Tensor) -> torch.Tensor:
        """Rewards ``[B]`` of responses ``[B, D]`` to prompts ``[B, D]`` (embeddings)."""
        return self.head(torch.cat([prompt_emb, response_emb], dim=-1)).squeeze(-1)

    def margins(self, pairs: PairEmbeddings) -> torch.Tensor:
        """``Δ = r(x, chosen) − r(x, rejected)`` for every pair."""
        return self(pairs.prompt, pairs.chosen) - self(pairs.prompt, pairs.rejected)

    def _pairs(self, data: Any) -> PairEmbeddings:
        if isinstance(data, PairEmbeddings):
            return data
        if self.encoder is None:
            raise EncoderError("this reward model has no encoder; pass PairEmbeddings or build it "
                               "with encoder=...")
        return embed_pairs(data, self.encoder)

    def fit(self, data: Any) -> list[float]:
        """Train on a preference dataset (or its :class:`PairEmbeddings`); returns per-epoch losses.

        ``config.validation_fraction`` of the pairs are held out to keep the best epoch."""
        cfg = self.config
        train, val = holdout_split(len(self._pairs(data)), cfg.validation_fraction, cfg.seed)
        pairs = self._pairs(data).subset(train)
        held_out = self._pairs(data).subset(val)
        optimizer = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.train()

        def loss_fn(index: torch.Tensor) -> torch.Tensor:
            return bradley_terry_loss(self.margins(pairs.subset(index.numpy())))

        def validation_loss() -> float:
            return float(bradley_terry_loss(self.margins(held_out)).mean())

        history = fit_minibatch(loss_fn, optimizer, len(pairs), cfg.epochs, cfg.batch_size,
                                cfg.seed, desc="Bradley-Terry", show_progress=cfg.show_progress,
                                module=self, validation_loss=validation_loss if len(val) else None)
        self.eval()
        return history

    @torch.no_grad()
    def accuracy(self, data: Any) -> float:
        """Held-out pairwise accuracy: fraction of pairs with ``r(chosen) > r(rejected)``."""
        return pairwise_accuracy(self.margins(self._pairs(data)))

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], responses: Sequence[Any]) -> np.ndarray:
        """Rewards of ``responses[i]`` to ``prompts[i]`` (texts), as a float array."""
        if len(prompts) != len(responses):
            raise ConfigError(f"{len(prompts)} prompts but {len(responses)} responses")
        if self.encoder is None:
            raise EncoderError("score() needs an encoder; load the model with an encoder")
        vectors = torch.from_numpy(self.encoder.encode(list(prompts) + list(responses)))
        n = len(prompts)
        return self(vectors[:n], vectors[n:]).numpy()

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write ``model.safetensors`` + ``config.json`` (recipe, embedding size, encoder spec)."""
        save_checkpoint(directory, self, {
            "class": self.kind, "embed_dim": self.embed_dim,
            "config": dataclasses.asdict(self.config),
            "encoder": None if self.encoder is None else self.encoder.spec(),
        })

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], encoder: ItemEncoder | None = None,
                        cache_dir: str | os.PathLike[str] | None = None) -> BradleyTerryRewardModel:
        """Load a saved model; its encoder is rebuilt from the saved spec unless one is passed."""
        meta, state = load_checkpoint(directory, cls.kind)
        if encoder is None and meta.get("encoder"):
            encoder = build_encoder(meta["encoder"], cache_dir=cache_dir)
        config = config_from_dict(BradleyTerryConfig, meta["config"], f"{directory}/config.json")
        model = cls(meta["embed_dim"], config, encoder)
        model.load_state_dict(state)
        return model.eval()


def train_per_group(dataset: Any, encoder: ItemEncoder, column: str = "type_id",
                    config: BradleyTerryConfig | None = None,
                    pairs: PairEmbeddings | None = None) -> dict[str, BradleyTerryRewardModel]:
    """One Bradley–Terry reward model per value of ``column`` (e.g. the annotator type).

    Returns ``{str(group): model}``; rows whose group is None are refused (they cannot be
    attributed). Pass precomputed ``pairs`` (aligned with ``dataset``) to avoid re-embedding.
    """
    if column not in dataset.column_names:
        raise ConfigError(f"dataset has no column {column!r} to group by; columns: "
                          f"{dataset.column_names}")
    groups = [None if g is None else str(g) for g in dataset[column]]
    if any(g is None for g in groups):
        row = groups.index(None)
        raise ConfigError(f"row {row}: column {column!r} is empty; every pair needs a group to "
                          "train per-group reward models")
    pairs = pairs if pairs is not None else embed_pairs(dataset, encoder)
    models: dict[str, BradleyTerryRewardModel] = {}
    labels = np.asarray(groups)
    for group in sorted(set(groups)):
        model = BradleyTerryRewardModel(encoder.dim, config, encoder)
        model.fit(pairs.subset(np.flatnonzero(labels == group)))
        models[group] = model
    return models
