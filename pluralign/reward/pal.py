"""PAL: pluralistic reward model with K prototypes and per-user mixture weights.

Chen, Chen, Rege, Wang, Vinayak, "PAL: Sample-Efficient Personalized Reward Modeling for
Pluralistic Alignment" (ICLR 2025).

Items (prompt x, response y) are embedded by a frozen encoder e(.) and mapped by a shared projector
``z = f([e(x); e(y)]) ∈ R^d``. User u has mixture weights ``w_u = softmax(θ_u)`` on the K-simplex.

* **PAL-A** (ideal points as mixtures): the user's ideal point is ``a_u = Σ_k w_uk p_k`` with K
  learned prototype points p_k; the reward is ``r_u(x, y) = −s · ‖z − a_u‖`` (Euclidean, as in the
  authors' code; ``distance="squared"`` uses ‖·‖²), s = exp(log_scale) clamped at 100.
* **PAL-B** (rewards as mixtures): prompt-conditioned prototypes ``g_k(e(x)) ∈ R^d`` (one small
  network per prototype; constant points when ``prompt_conditioned=False``); the user's ideal
  point is ``a_u(x) = Σ_k w_uk g_k(x)`` and the reward is ``r_u(x, y) = τ · cos(z, a_u(x))`` with
  τ = exp(s) clamped at 100 and s initialised at log(1/0.07) (CLIP convention), or with
  ``similarity="inner"`` ``r_u(x, y) = τ · ⟨z, a_u(x)⟩ = Σ_k w_uk · τ⟨z, g_k(x)⟩`` -- literally a
  mixture of K prototype reward functions (τ initialised at 1); with K = 1 this is the
  Bradley–Terry head.

A preference y_w ≻ y_l follows the Bradley–Terry likelihood σ(r_u(x, y_w) − r_u(x, y_l)) (the
learnable scale is s or τ), optionally the authors' hinge for PAL-A. Seen users learn θ_u jointly
with the projector and prototypes; an unseen user is fitted by :meth:`PALRewardModel.adapt`, which
trains only that user's K logits with everything else frozen. Method notes: [PAL-NOTES].
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pluralign.config import config_from_dict
from pluralign.errors import ConfigError, PluralignError
from pluralign.reward.base import (
    RewardTrainingConfig,
    bradley_terry_loss,
    fit_minibatch,
    hinge_loss,
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
from pluralign.validation import COUNT, INDEX, NON_NEGATIVE, POSITIVE, check_fields

logger = logging.getLogger(__name__)

UNKNOWN_POLICIES = ("error", "average")
MAX_SCALE = 100.0


class UnknownUserError(PluralignError, KeyError):
    """A user id was never seen in training nor adapted; fit it with ``adapt`` or ask for
    ``unknown="average"`` (the population-average mixture)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class PALConfig(RewardTrainingConfig):
    """Architecture and training recipe of :class:`PALRewardModel` (defaults from the authors' code
    where they exist; learning rates raised for small frozen-embedding datasets).

    Attributes:
        variant: ``"A"`` (ideal point = mixture of prototype points, distance score) or ``"B"``
            (mixture of prompt-conditioned prototype rewards, cosine × temperature).
        n_prototypes: K, the number of prototypes (the authors use 1-2 on their datasets).
        pref_dim: d, dimension of the preference space (16 fitted the homogeneous control ~1 point
            worse than Bradley–Terry on 7.5k pairs; 64 matched it).
        hidden_dim: hidden width of the projector (and of PAL-B's prototype networks); 0 = linear.
        loss: ``"logistic"`` (Bradley–Terry) or ``"hinge"`` (max(0, 1 − Δ), the authors' PAL-A
            loss).
        distance: PAL-A only, ``"euclidean"`` (authors) or ``"squared"``.
        prompt_conditioned: PAL-B only, prototypes g_k(prompt) instead of constant points.
        similarity: PAL-B only, ``"cosine"`` (authors) or ``"inner"`` (unnormalised inner product).
        lr_projector: AdamW rate of the projector (authors: 1e-4 with large data).
        weight_decay: AdamW weight decay of the projector (authors: 0.01).
        lr_prototypes: rate of the prototypes and the scale (authors: 5e-3).
        lr_users: rate of the seen users' mixture logits (authors: 5e-3; at 5e-3 the logits move
            too little from their random start in our small runs and two types can share a
            prototype, e.g. ARI 0.76 vs 1.0 at 5e-2 on the benchmark population with 100 pairs).
        user_init_std: standard deviation of the seen users' initial logits (authors: 1, randn).
        adapt_lr: rate for a new user's logits in :meth:`PALRewardModel.adapt` (authors: 5e-3,
            which barely moves the logits from uniform in 20 epochs; see the benchmark's
            ``adapt_methods_at_20``).
        adapt_epochs: passes over a new user's pairs (authors: 20).
        adapt_batch_size: pairs per adaptation step (authors: 4); 0 = full batch.
        adapt_prior: ``"empirical"`` (MAP: a Gaussian prior on a new user's centred logits with
            the per-prototype mean and variance of the seen users' centred logits, also the
            starting point) or ``"none"`` (maximum likelihood from uniform weights, the authors').
            The empirical prior is weak when seen users are spread over prototypes and strong when
            they all look alike (a homogeneous population), where 20 noisy pairs would otherwise
            pull a new user away from the shared preference.

    The fields shared with :class:`~pluralign.reward.bradley_terry.BradleyTerryConfig`
    (hidden_dim, weight_decay, epochs, batch_size, validation_fraction, seed, show_progress) are
    :class:`~pluralign.reward.base.RewardTrainingConfig`'s.
    """

    variant: str = "A"
    n_prototypes: int = 2
    pref_dim: int = 64
    loss: str = "logistic"
    distance: str = "euclidean"
    prompt_conditioned: bool = True
    similarity: str = "cosine"
    lr_projector: float = 3e-3
    lr_prototypes: float = 5e-3
    lr_users: float = 5e-2
    user_init_std: float = 1.0
    adapt_lr: float = 5e-2
    adapt_epochs: int = 20
    adapt_batch_size: int = 4
    adapt_prior: str = "empirical"

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = {"variant": ("A", "B"), "loss": ("logistic", "hinge"),
                   "distance": ("euclidean", "squared"), "similarity": ("cosine", "inner"),
                   "adapt_prior": ("empirical", "none")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ConfigError(f"PALConfig.{name} must be one of {valid}, "
                                  f"got {getattr(self, name)!r}")
        check_fields(self, {
            **dict.fromkeys(("n_prototypes", "pref_dim", "adapt_epochs"), COUNT),
            "adapt_batch_size": INDEX, "user_init_std": NON_NEGATIVE,
            **dict.fromkeys(("lr_projector", "lr_prototypes", "lr_users", "adapt_lr"), POSITIVE),
        })


def _annotators(dataset: Any) -> list[str]:
    if "annotator_id" not in dataset.column_names:
        raise ConfigError("PAL needs an 'annotator_id' column: it learns one mixture per annotator")
    ids = list(dataset["annotator_id"])
    for row, uid in enumerate(ids):
        if uid is None or uid == "":
            raise ConfigError(f"row {row}: annotator_id is empty; PAL needs the annotator of every "
                              "pair (drop anonymous pairs or train a BradleyTerryRewardModel)")
    return [str(u) for u in ids]


class PALRewardModel(nn.Module):
    """PAL-A / PAL-B pluralistic reward model on frozen embeddings of dimension ``embed_dim``."""

    kind = "PALRewardModel"

    def __init__(self, embed_dim: int, config: PALConfig | None = None,
                 encoder: ItemEncoder | None = None, user_ids: Sequence[str] = ()) -> None:
        super().__init__()
        self.config = cfg = config or PALConfig()
        self.embed_dim = embed_dim
        self.encoder = encoder
        torch.manual_seed(cfg.seed)
        k, d = cfg.n_prototypes, cfg.pref_dim
        self.projector = mlp(2 * embed_dim, cfg.hidden_dim, d)
        if cfg.variant == "B" and cfg.prompt_conditioned:
            self.prompt_prototypes = nn.ModuleList(mlp(embed_dim, cfg.hidden_dim, d)
                                                   for _ in range(k))
        else:
            self.prototypes = nn.Parameter(torch.randn(k, d))
        cosine = cfg.variant == "B" and cfg.similarity == "cosine"
        init_scale = math.log(1 / 0.07) if cosine else 0.0
        self.log_scale = nn.Parameter(torch.tensor(init_scale))
        self.user_ids: list[str] = []
        self._index: dict[str, int] = {}
        self.user_logits = nn.Parameter(torch.zeros(0, k))
        self._register(user_ids, torch.randn(len(user_ids), k))

    # ----------------------------------------------------------------------------------- users
    def _register(self, ids: Sequence[str], logits: torch.Tensor) -> None:
        clash = [u for u in ids if u in self._index]
        if clash:
            raise ConfigError(f"users already present in the model: {clash[:5]}")
        start = len(self.user_ids)
        self.user_ids.extend(ids)
        self._index.update({u: start + i for i, u in enumerate(ids)})
        self.user_logits = nn.Parameter(torch.cat([self.user_logits.data, logits.detach()]))

    def population_weights(self) -> torch.Tensor:
        """Population-average mixture ``w̄ = mean_u softmax(θ_u)`` over all known users."""
        if not self.user_ids:
            raise UnknownUserError("the model has no users yet: train it before scoring")
        return F.softmax(self.user_logits.detach(), dim=-1).mean(0)

    def mixture_weights(self, user_ids: Sequence[str], unknown: str = "error") -> torch.Tensor:
        """``w_u = softmax(θ_u)`` for each id ``[B, K]``.

        Unknown ids raise :class:`UnknownUserError` (``unknown="error"``) or get the
        population-average mixture (``unknown="average"``), never a silent zero.
        """
        if unknown not in UNKNOWN_POLICIES:
            raise ConfigError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        missing = sorted({str(u) for u in user_ids if str(u) not in self._index})
        if missing and unknown == "error":
            raise UnknownUserError(
                f"{len(missing)} user id(s) not in the model (e.g. {missing[:3]}); fit them with "
                "adapt(pairs) or pass unknown='average' for the population-average mixture")
        weights = F.softmax(self.user_logits, dim=-1)
        fallback = self.population_weights() if missing else None
        rows = [weights[self._index[str(u)]] if str(u) in self._index else fallback
                for u in user_ids]
        if not rows:
            return weights[:0]
        return torch.stack(rows)

    def user_groups(self) -> dict[str, int]:
        """Each known user's dominant prototype ``argmax_k w_uk``."""
        dominant = self.user_logits.detach().argmax(-1).tolist()
        return dict(zip(self.user_ids, dominant, strict=True))

    # ------------------------------------------------------------------------------- scoring
    def scale(self) -> torch.Tensor:
        """The learnable Bradley–Terry scale exp(log_scale), clamped at 100."""
        return self.log_scale.exp().clamp(max=MAX_SCALE)

    def rewards(self, prompt_emb: torch.Tensor, response_emb: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        """``r_u(x, y)`` ``[B]`` for embeddings ``[B, D]`` and mixture weights ``[B, K]``."""
        z = self.projector(torch.cat([prompt_emb, response_emb], dim=-1))
        if self.config.variant == "A":
            ideal = weights @ self.prototypes
            sq = (z - ideal).pow(2).sum(-1)
            dist = sq if self.config.distance == "squared" else (sq + 1e-12).sqrt()
            return -self.scale() * dist
        if self.config.prompt_conditioned:
            protos = torch.stack([g(prompt_emb) for g in self.prompt_prototypes], dim=1)
            ideal = (weights.unsqueeze(-1) * protos).sum(1)
        else:
            ideal = weights @ self.prototypes
        if self.config.similarity == "inner":
            return self.scale() * (z * ideal).sum(-1)
        return self.scale() * F.cosine_similarity(z, ideal, dim=-1, eps=1e-8)

    def margins(self, pairs: PairEmbeddings, weights: torch.Tensor) -> torch.Tensor:
        """``Δ = r_u(x, chosen) − r_u(x, rejected)`` per pair."""
        return (self.rewards(pairs.prompt, pairs.chosen, weights)
                - self.rewards(pairs.prompt, pairs.rejected, weights))

    def _loss(self, margin: torch.Tensor) -> torch.Tensor:
        return hinge_loss(margin) if self.config.loss == "hinge" else bradley_terry_loss(margin)

    def _pairs(self, data: Any, pairs: PairEmbeddings | None) -> PairEmbeddings:
        if pairs is not None:
            if len(pairs) != len(data):
                raise ConfigError(f"pairs has {len(pairs)} rows but the dataset {len(data)}")
            return pairs
        if self.encoder is None:
            raise EncoderError("this PAL model has no encoder; pass pairs=embed_pairs(...) or "
                               "build it with encoder=...")
        return embed_pairs(data, self.encoder)

    # ------------------------------------------------------------------------------ training
    def fit(self, dataset: Any, pairs: PairEmbeddings | None = None) -> list[float]:
        """Train projector, prototypes, scale and the users' logits on a dataset with annotator_id.

        New annotators are registered with logits ~ N(0, user_init_std²) (the authors use 1);
        returns per-epoch mean losses.
        """
        users = _annotators(dataset)
        pairs = self._pairs(dataset, pairs)
        new = [u for u in dict.fromkeys(users) if u not in self._index]
        noise = torch.randn(len(new), self.config.n_prototypes,
                            generator=torch.Generator().manual_seed(self.config.seed))
        self._register(new, self.config.user_init_std * noise)
        cfg = self.config
        train, val = holdout_split(len(users), cfg.validation_fraction, cfg.seed)
        user_index = torch.tensor([self._index[u] for u in users])
        held_out, held_out_users = pairs.subset(val), user_index[val]
        pairs, user_index = pairs.subset(train), user_index[train]
        shared_protos = [p for n, p in self.named_parameters()
                         if n.startswith(("prototypes", "prompt_prototypes"))]
        optimizer = torch.optim.AdamW([
            {"params": self.projector.parameters(), "lr": cfg.lr_projector,
             "weight_decay": cfg.weight_decay},
            {"params": [*shared_protos, self.log_scale], "lr": cfg.lr_prototypes,
             "weight_decay": 0.0},
            {"params": [self.user_logits], "lr": cfg.lr_users, "weight_decay": 0.0},
        ])
        self.train()

        def loss_fn(index: torch.Tensor) -> torch.Tensor:
            weights = F.softmax(self.user_logits[user_index[index]], dim=-1)
            return self._loss(self.margins(pairs.subset(index.numpy()), weights))

        def validation_loss() -> float:
            weights = F.softmax(self.user_logits[held_out_users], dim=-1)
            return float(self._loss(self.margins(held_out, weights)).mean())

        history = fit_minibatch(loss_fn, optimizer, len(pairs), cfg.epochs, cfg.batch_size,
                                cfg.seed, desc=f"PAL-{cfg.variant}",
                                show_progress=cfg.show_progress, module=self,
                                validation_loss=validation_loss if len(val) else None)
        self.eval()
        return history

    def adapt(self, dataset: Any, n: int | None = None, pairs: PairEmbeddings | None = None,
              method: str | None = None) -> list[str]:
        """Few-shot fit of new users: only their K mixture logits train, everything else is frozen.

        Args:
            dataset: pairs of users not yet in the model (column ``annotator_id``).
            n: use each user's first ``n`` pairs (dataset order); None uses all.
            pairs: precomputed embeddings aligned with ``dataset``.
            method: ``"minibatch"`` (AdamW, ``adapt_batch_size`` pairs per step per user, as the
                authors) or ``"fullbatch"``; default from ``config.adapt_batch_size``
                (0 = full batch).

        Per user u with n_u pairs the objective is the mean pair loss plus, with the empirical prior
        N(μ, diag σ²) of :meth:`logit_prior`, ``Σ_k (θ_uk − μ_k)² / (2 σ_k² n_u)`` (the MAP
        objective divided by n_u). Users are optimised independently (the loss is a sum over users
        and Adam is elementwise). Returns the adapted user ids.
        """
        cfg = self.config
        method = method or ("fullbatch" if cfg.adapt_batch_size == 0 else "minibatch")
        if method not in ("minibatch", "fullbatch"):
            raise ConfigError(f"method must be 'minibatch' or 'fullbatch', got {method!r}")
        if n is not None and n < 1:
            raise ConfigError(f"n must be >= 1 pairs per user, got {n}")
        users = _annotators(dataset)
        known = sorted({u for u in users if u in self._index})
        if known:
            raise ConfigError(f"adapt() is for new users; {known[:3]} are already in the model")
        pairs = self._pairs(dataset, pairs)
        order = list(dict.fromkeys(users))
        rows_of: dict[str, list[int]] = {u: [] for u in order}
        for row, u in enumerate(users):
            if n is None or len(rows_of[u]) < n:
                rows_of[u].append(row)
        prior = self.logit_prior() if cfg.adapt_prior == "empirical" else None
        start = prior[0] if prior is not None else torch.zeros(cfg.n_prototypes)
        logits = nn.Parameter(start.repeat(len(order), 1))
        optimizer = torch.optim.AdamW([logits], lr=cfg.adapt_lr, weight_decay=0.0)
        batch = cfg.adapt_batch_size if method == "minibatch" else 0
        self.eval()
        self.requires_grad_(False)
        try:
            self._adapt_loop(logits, optimizer, [rows_of[u] for u in order], pairs, batch, prior)
        finally:
            self.requires_grad_(True)
        self._register(order, logits.detach())
        return order

    def logit_prior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Empirical prior of centred user logits: per-prototype mean μ and variance σ² (floored at
        1e-3) over the known users' logits θ_u − mean_k θ_uk (softmax is shift-invariant)."""
        if len(self.user_ids) < 2:
            raise UnknownUserError("the empirical prior needs at least two trained users; set "
                                   "adapt_prior='none'")
        centred = self.user_logits.detach()
        centred = centred - centred.mean(-1, keepdim=True)
        return centred.mean(0), centred.var(0).clamp_min(1e-3)

    def _adapt_loop(self, logits: nn.Parameter, optimizer: torch.optim.Optimizer,
                    rows: list[list[int]], pairs: PairEmbeddings, batch: int,
                    prior: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        cfg = self.config
        sizes = torch.tensor([len(r) for r in rows], dtype=torch.float32)
        generator = torch.Generator().manual_seed(cfg.seed)
        longest = max(len(r) for r in rows)
        step = batch or longest
        for _ in tqdm(range(cfg.adapt_epochs), desc="PAL adapt", leave=False,
                      disable=not cfg.show_progress):
            shuffled = [[r[i] for i in torch.randperm(len(r), generator=generator).tolist()]
                        for r in rows]
            for start in range(0, longest, step):
                chunk = [(u, i) for u, r in enumerate(shuffled) for i in r[start:start + step]]
                if not chunk:
                    continue
                owner = torch.tensor([u for u, _ in chunk])
                index = np.array([i for _, i in chunk])
                losses = self._loss(self.margins(pairs.subset(index),
                                                 F.softmax(logits[owner], dim=-1)))
                counts = torch.bincount(owner, minlength=len(rows)).clamp_min(1)
                loss = (losses / counts[owner]).sum()
                if prior is not None:
                    present = torch.unique(owner)
                    centred = logits[present] - logits[present].mean(-1, keepdim=True)
                    penalty = ((centred - prior[0]) ** 2 / (2 * prior[1])).sum(-1)
                    loss = loss + (penalty / sizes[present]).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    # ---------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def pair_margins(self, dataset: Any, pairs: PairEmbeddings | None = None,
                     unknown: str = "error") -> torch.Tensor:
        """Margins of every pair of ``dataset`` under its annotator's mixture."""
        weights = self.mixture_weights(_annotators(dataset), unknown=unknown)
        return self.margins(self._pairs(dataset, pairs), weights)

    def accuracy(self, dataset: Any, pairs: PairEmbeddings | None = None,
                 unknown: str = "error") -> float:
        """Pairwise accuracy on ``dataset`` with each pair scored for its own annotator."""
        return pairwise_accuracy(self.pair_margins(dataset, pairs, unknown))

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], responses: Sequence[Any], user_ids: Sequence[str],
              unknown: str = "error") -> np.ndarray:
        """Rewards of ``responses[i]`` to ``prompts[i]`` for user ``user_ids[i]`` (texts)."""
        if not len(prompts) == len(responses) == len(user_ids):
            raise ConfigError(f"got {len(prompts)} prompts, {len(responses)} responses and "
                              f"{len(user_ids)} user ids; they must align")
        if self.encoder is None:
            raise EncoderError("score() needs an encoder; load the model with an encoder")
        weights = self.mixture_weights(user_ids, unknown=unknown)
        vectors = torch.from_numpy(self.encoder.encode(list(prompts) + list(responses)))
        return self.rewards(vectors[:len(prompts)], vectors[len(prompts):], weights).numpy()

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters: ``shared`` (projector, prototypes, scale), ``per_user`` (K logits),
        ``users`` and ``total = shared + users × K``."""
        per_user = self.config.n_prototypes
        total = sum(p.numel() for p in self.parameters())
        return {"shared": total - self.user_logits.numel(), "per_user": per_user,
                "users": len(self.user_ids), "total": total}

    def clone(self, config: PALConfig | None = None) -> PALRewardModel:
        """An independent copy (same weights and users, same encoder object), optionally with
        another recipe for later ``adapt`` calls (the architecture fields must match)."""
        copy = type(self)(self.embed_dim, config or self.config, self.encoder, self.user_ids)
        copy.load_state_dict(self.state_dict())
        return copy.eval()

    # --------------------------------------------------------------------------------- io
    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write ``model.safetensors`` + ``config.json`` (recipe, user ids, encoder spec)."""
        save_checkpoint(directory, self, {
            "class": self.kind, "embed_dim": self.embed_dim,
            "config": dataclasses.asdict(self.config), "user_ids": self.user_ids,
            "encoder": None if self.encoder is None else self.encoder.spec(),
        })

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], encoder: ItemEncoder | None = None,
                        cache_dir: str | os.PathLike[str] | None = None) -> PALRewardModel:
        """Load a saved PAL model; its encoder is rebuilt from the saved spec unless one is
        passed."""
        meta, state = load_checkpoint(directory, cls.kind)
        if encoder is None and meta.get("encoder"):
            encoder = build_encoder(meta["encoder"], cache_dir=cache_dir)
        config = config_from_dict(PALConfig, meta["config"], where=f"{directory}/config.json")
        model = cls(meta["embed_dim"], config, encoder, user_ids=meta["user_ids"])
        model.load_state_dict(state)
        return model.eval()
