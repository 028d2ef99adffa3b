"""Group-robust preference optimisation (GRPO; Ramesh et al. 2024,
"Group Robust Preference Optimization in Reward-free RLHF", arXiv 2405.20304).

The group-robust objective of that paper is the saddle point

    min_θ max_{α ∈ Δ_K} Σ_g α_g · L_g(θ),   L_g(θ) = (1/N_g) Σ_{i ∈ D_g} ℓ_i(θ),

over K groups with N_g training pairs each (N = Σ_g N_g) and a per-pair preference loss ℓ_i (the
DPO loss, or any per-pair loss such as MixDPO's). Their Algorithm 1 alternates, per step t, a
mirror-ascent (exponentiated-gradient) step on α and a gradient step on θ:

    sample g ~ Categorical(N_1/N, …, N_K/N), then a pair i from D_g;
    α'_g ← α_g^{(t−1)} · exp(η · N·ℓ_i / N_g)   (other groups unchanged),   α^{(t)} = α' / Σ α';
    θ^{(t)} ← θ^{(t−1)} − η_θ · (N α_g^{(t)} / N_g) · ∇_θ ℓ_i.

Both updates use an importance weight N/N_g = 1/p_g with **the group's share of the training
set** p_g = N_g/N (not of the batch): drawing g with probability p_g and scaling by 1/p_g makes
``(N/N_g)·ℓ_i·[g_i = g]`` an unbiased estimate of L_g. The published text of Algorithm 1 could not
be retrieved here; the update above is derived from the objective (an unbiased stochastic
gradient of Σ_g α_g L_g in α and in θ) and matches the issue's description (α_g ∝ α_g·exp(η·L_g),
policy gradient weighted by α_g/n_g).

Minibatch version (what this module implements). A minibatch of B pairs drawn uniformly from the
training set is B draws of the sampling above, so the estimates are averaged over it:

    L̂_g = (1/B) Σ_{i ∈ batch, g_i = g} ℓ_i / p_g       (:func:`group_loss_estimates`)
    α ← softmax(log α + η · L̂)                          (:func:`exponentiated_gradient_step`)
    loss = (1/B) Σ_i (α_{g_i} / p_{g_i}) · ℓ_i          (:func:`group_robust_loss`)

so the mean of the per-pair values :func:`group_robust_loss` returns is an unbiased estimate of
Σ_g α_g L_g, exactly what ``PreferenceTrainer`` (which takes the mean) needs. Across DDP processes
B and the per-group sums are those of the *global* batch (:func:`reduced_group_sums` all-reduces
them), so every rank takes the same α step and holds the same weights; DDP's gradient average of
the per-rank means is then the global batch's mean. With gradient accumulation each micro-batch
is one α step. η = 0 keeps α at its uniform start and leaves DPO with fixed importance weights
(1/K)/p_g, i.e. every group weighted equally regardless of its size.

Starting point. α starts uniform (the simplex centre; ``initial_weights="uniform"``), or at the
training shares, ``α = p`` (``"proportional"``): then every per-pair weight α_g/p_g is 1, the
first step is plain DPO, and the trajectory shows how far robustness moves the weights away from
the data's own mixture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from pluralign.errors import ConfigError
from pluralign.objectives.base import Column, Objective, setting
from pluralign.objectives.dpo import DPOObjective, DPOSettings
from pluralign.objectives.mixdpo import PANEL_SETTINGS, MixDPOObjective, MixDPOSettings
from pluralign.validation import NON_NEGATIVE

#: Per-pair column holding each pair's integer group id (see :func:`pluralign.data.groups`).
GROUP_COLUMN = "group"
#: Where the group weights start: the simplex centre or the training shares.
INITIAL_WEIGHTS = ("uniform", "proportional")


def reduced_group_sums(loss: Tensor, group: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Per-group sums of ``loss`` and pair counts, summed over all processes when distributed.

    Returns float64 ``(sums[K], counts[K])``. When ``torch.distributed`` is initialised with more
    than one process both are all-reduced (one collective), so every rank gets the global batch's
    totals; every rank must call this the same number of times.
    """
    group = group.long()
    stacked = torch.zeros(2, num_groups, dtype=torch.float64, device=loss.device)
    stacked[0].index_add_(0, group, loss.detach().to(torch.float64))
    stacked[1].index_add_(0, group, torch.ones_like(group, dtype=torch.float64))
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return stacked[0], stacked[1]


def group_loss_estimates(sums: Tensor, counts: Tensor, fractions: Tensor) -> Tensor:
    """Importance-weighted estimate of every group's mean loss, ``L̂_g = Σ_{i∈g} ℓ_i / (B·p_g)``.

    ``sums``/``counts`` are the batch's per-group loss sums and counts (``B = Σ counts``) and
    ``fractions`` the groups' shares ``p_g = N_g/N`` of the training set (module docstring; the
    minibatch average of Algorithm 1's ``N·ℓ/N_g``). A group absent from the batch gets 0.
    """
    return sums / (counts.sum() * fractions.to(sums.dtype))


def exponentiated_gradient_step(weights: Tensor, group_losses: Tensor, step_size: float) -> Tensor:
    """One mirror-ascent step on the simplex, ``α_g ∝ α_g · exp(η · L̂_g)`` (Algorithm 1).

    Computed in log space (``softmax(log α + η L̂)``), so large ``η·L̂`` cannot overflow.
    """
    return torch.softmax(torch.log(weights) + step_size * group_losses.to(weights.dtype), dim=0)


def group_robust_loss(loss: Tensor, group: Tensor, weights: Tensor, fractions: Tensor) -> Tensor:
    """Per-pair ``(α_{g_i} / p_{g_i}) · ℓ_i``; its batch mean estimates ``Σ_g α_g L_g``.

    The weights are constants (no gradient flows into α or p); ``loss`` keeps its dtype.
    """
    scale = (weights / fractions.to(weights.dtype))[group.long()]
    return loss * scale.detach().to(loss.dtype)


def _group_ids(batch: Mapping[str, Any] | None, column: str, num_groups: int,
               device: torch.device) -> Tensor:
    if batch is None or column not in batch:
        raise ConfigError(f"GroupRobustObjective needs batch[{column!r}] (an integer group id per "
                          "pair); add it with pluralign.data.groups.add_group_column")
    raw = torch.as_tensor(batch[column]).to(device)
    ids = raw.long()
    if raw.is_floating_point() and not torch.equal(ids.to(raw.dtype), raw):
        raise ConfigError(f"batch[{column!r}] must hold integer group ids, got {raw.tolist()[:5]}")
    if ids.numel() and (ids.min() < 0 or ids.max() >= num_groups):
        raise ConfigError(f"batch[{column!r}] has group ids outside [0, {num_groups}): "
                          f"{sorted(set(ids.tolist()))[:10]}; set num_groups to the number of "
                          "groups in the name table")
    return ids


class GroupRobustObjective(Objective):
    """Group-robust version of any per-pair objective (GRPO; see the module docstring).

    Wraps ``base`` (DPO, MixDPO, ...): ``forward`` computes the base per-pair losses, takes one
    exponentiated-gradient step on the group weights α from the (all-process) batch, and returns
    ``(α_g/p_g) · ℓ_i`` per pair. α is only updated in training mode with gradients enabled (a
    training step); evaluation (``torch.no_grad`` or ``.eval()``) leaves it untouched.

    State kept as buffers, hence in ``state_dict`` and in ``PreferenceTrainer``'s
    ``strength.safetensors`` of every checkpoint, restored on resume: ``group_weights`` (α,
    float64) and ``group_fractions`` (p). The base objective's parameters stay this module's
    parameters, so a learnable MixDPO strength is still trained.

    Args:
        base: the per-pair objective to make robust.
        num_groups: K, or None to set later with :meth:`set_groups` (how the registry's
            ``group_dpo``/``group_mixdpo`` are built from a config: ``PreferenceTrainer`` sets
            K, the names and the counts from the training data through :meth:`set_ids`,
            :func:`pluralign.training.columns.prepare_columns`).
        step_size: η ≥ 0 of the α ascent (0: fixed uniform α).
        group_counts: training pairs per group ``N_g`` (all > 0), or None to set later with
            :meth:`set_group_counts`.
        group_names: display names of the groups in metrics (default ``"0"``, ``"1"``, ...).
        column: the batch column with each pair's group id.
        initial_weights: ``"uniform"`` or ``"proportional"`` (α = p once the counts are set).
        group_by: what defines a pair's group (:mod:`pluralign.data.groups`); declared to the
            trainer through :meth:`columns` (``ids_from``), which builds ``column`` from it;
            unset, the data must already have ``column``.
    """

    def __init__(self, base: Objective, num_groups: int | None = None, step_size: float = 0.01,
                 group_counts: Sequence[float] | None = None,
                 group_names: Sequence[str] | None = None, column: str = GROUP_COLUMN,
                 initial_weights: str = "uniform", group_by: str | None = None) -> None:
        super().__init__()
        if initial_weights not in INITIAL_WEIGHTS:
            raise ConfigError(f"initial_weights must be one of {INITIAL_WEIGHTS}, "
                              f"got {initial_weights!r}")
        self.initial_weights = initial_weights
        if not isinstance(base, Objective):
            raise ConfigError(f"GroupRobustObjective wraps an Objective, got {type(base).__name__}")
        if not step_size >= 0:
            raise ConfigError(f"group_step_size={step_size!r} is out of range; it must be >= 0")
        self.base, self.step_size = base, float(step_size)
        self.column, self.group_by = column, group_by
        self.num_groups = 0
        if num_groups is not None or group_names is not None:
            self.set_groups(len(group_names) if num_groups is None else num_groups, group_names)
        if group_counts is not None:
            self.set_group_counts(group_counts)

    def columns(self) -> tuple[Column, ...]:
        """The base objective's columns and the group id column (derived from ``group_by`` when
        it is set)."""
        return (*self.base.columns(), Column(self.column, ids=True, ids_from=self.group_by))

    def set_ids(self, column: str, counts: Sequence[int], names: Sequence[str] | None) -> None:
        """The groups and their training counts: K and the names from a derived column (``names``),
        else K from the ids in the data (named ``"0"``, ``"1"``, ... unless already set). Other
        id columns are the base objective's."""
        if column != self.column:
            self.base.set_ids(column, counts, names)
            return
        if self.group_by is not None and len(counts) < 2:
            raise ConfigError(f"group_by={self.group_by!r} has one group "
                              f"({', '.join(map(str, names or ['0']))}) in the training data; a "
                              "group-robust objective needs >= 2 groups: pick another group_by")
        if names is not None or len(counts) != self.num_groups:
            self.set_groups(len(counts), names)
        self.set_group_counts(counts)

    def set_groups(self, num_groups: int, group_names: Sequence[str] | None = None) -> None:
        """Fix K and the groups' names (default ``"0"``, ``"1"``, ...); α restarts uniform."""
        if int(num_groups) < 1:
            raise ConfigError(f"group-robust objective needs num_groups >= 1, got {num_groups!r}")
        self.num_groups = int(num_groups)
        names = [str(g) for g in range(self.num_groups)] if group_names is None else \
            [str(n) for n in group_names]
        if len(names) != self.num_groups:
            raise ConfigError(f"group_names has {len(names)} names for {self.num_groups} groups")
        self.group_names = names
        zeros = torch.zeros(self.num_groups, dtype=torch.float64)
        self.register_buffer("group_weights", torch.full_like(zeros, 1.0 / self.num_groups))
        self.register_buffer("group_fractions", zeros.clone())
        self.register_buffer("last_group_losses", zeros.clone(), persistent=False)

    @property
    def has_group_counts(self) -> bool:
        """Whether the training-set group shares p_g are known."""
        return bool(self.group_fractions.sum() > 0)

    def set_group_counts(self, counts: Sequence[float] | Tensor) -> None:
        """Set ``p_g = N_g / N`` from the training set's pairs per group (every N_g > 0); with
        ``initial_weights="proportional"`` α is reset to p (a resume then loads the saved α)."""
        counts = torch.as_tensor(counts, dtype=torch.float64).flatten()
        if counts.numel() != self.num_groups:
            raise ConfigError(f"group_counts has {counts.numel()} entries for "
                              f"{self.num_groups} groups")
        empty = [self.group_names[g] for g in torch.nonzero(counts <= 0).flatten().tolist()]
        if empty:
            raise ConfigError(f"group(s) {empty} have no training pairs; a group-robust "
                              "objective needs every group in the training set (drop them from "
                              "the name table or map them to another group)")
        self.group_fractions.copy_(counts / counts.sum())
        if self.initial_weights == "proportional":
            self.group_weights.copy_(self.group_fractions)

    def start_weights(self) -> Tensor:
        """α before the first step: uniform, or the training shares (``"proportional"``)."""
        if self.initial_weights == "proportional":
            return self.group_fractions.clone()
        return torch.full_like(self.group_weights, 1.0 / self.num_groups)

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        if not self.num_groups or not self.has_group_counts:
            raise ConfigError("GroupRobustObjective has no group counts; pass group_counts, "
                              "call set_group_counts(training pairs per group) or "
                              "pluralign.training.columns.prepare_columns before training")
        loss = self.base(margin, batch)
        group = _group_ids(batch, self.column, self.num_groups, loss.device)
        if self.training and torch.is_grad_enabled():
            sums, counts = reduced_group_sums(loss, group, self.num_groups)
            estimates = group_loss_estimates(sums, counts, self.group_fractions)
            self.last_group_losses.copy_(estimates)
            self.group_weights.copy_(
                exponentiated_gradient_step(self.group_weights, estimates, self.step_size))
        return group_robust_loss(loss, group, self.group_weights, self.group_fractions)

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        out = dict(self.base.metrics())
        for name, w, lo in zip(self.group_names, self.group_weights.tolist(),
                               self.last_group_losses.tolist(), strict=True):
            out[f"group_weight/{name}"] = w
            out[f"group_loss/{name}"] = lo
        return out

    def extra_repr(self) -> str:
        return f"num_groups={self.num_groups}, step_size={self.step_size:g}"


# ----------------------------------------------------------------------------------------------
# Registry entries: ``group_dpo`` (group-robust DPO) and ``group_mixdpo`` (group-robust MixDPO)
# ----------------------------------------------------------------------------------------------


@dataclass
class GroupSettings:
    """The settings a group-robust objective adds to its base objective's."""

    group_by: str | None = setting(
        None, "What defines a pair's group: 'attr.<name>', 'ctx.<name>' or a column "
        "(annotator_id, a cluster or type column); the integer `group` column is built from it "
        "(pluralign.data.groups). Unset: the data must have a `group` column.")
    group_step_size: float = setting(
        0.01, "Step size eta >= 0 of the exponentiated-gradient ascent on the group weights "
        "(Ramesh et al. 2024; 0 keeps them at their start).", rule=NON_NEGATIVE)
    group_init: str = setting(
        "uniform", "Start of the group weights: 'uniform' or 'proportional' (the training "
        "shares, so the first step is plain DPO).", choices=INITIAL_WEIGHTS)


@dataclass
class GroupDPOSettings(DPOSettings, GroupSettings):
    """Settings of :class:`GroupDPOObjective`: DPO's plus :class:`GroupSettings`."""


@dataclass
class GroupMixDPOSettings(MixDPOSettings, GroupSettings):
    """Settings of :class:`GroupMixDPOObjective`: MixDPO's plus :class:`GroupSettings`."""


class _RegisteredGroupRobust(GroupRobustObjective):
    """A group-robust objective built from settings: its base objective from the base's own
    settings, the group-robust layer from :class:`GroupSettings`."""

    base_objective: type[Objective] = Objective

    @classmethod
    def from_settings(cls, settings: Any) -> Objective:
        base_cls = cls.base_objective
        base = base_cls.from_settings(base_cls.Settings(
            **{f.name: getattr(settings, f.name) for f in fields(base_cls.Settings)}))
        return cls(base, step_size=settings.group_step_size, initial_weights=settings.group_init,
                   group_by=settings.group_by)

    @classmethod
    def used(cls, settings: Any) -> set[str]:
        group = {f.name for f in fields(GroupSettings)}
        return cls.base_objective.used(settings) | group

    @classmethod
    def choice(cls, settings: Any) -> str:
        return cls.base_objective.choice(settings)


class GroupDPOObjective(_RegisteredGroupRobust):
    """Group-robust DPO (``objective: group_dpo``)."""

    Settings = GroupDPOSettings
    base_objective = DPOObjective
    hint = DPOObjective.hint.replace("'mixdpo'", "'group_mixdpo'")


class GroupMixDPOObjective(_RegisteredGroupRobust):
    """Group-robust MixDPO (``objective: group_mixdpo``): the same outer weights over the MixDPO
    per-pair loss; a learnable strength is still trained."""

    Settings = GroupMixDPOSettings
    base_objective = MixDPOObjective
    hint = MixDPOObjective.hint

    @classmethod
    def used(cls, settings: Any) -> set[str]:
        """MixDPO's settings but the panel ones: the group weights reweight single pairs, which a
        likelihood coupling an annotator's pairs (``strength_unit: annotator``) does not have."""
        return super().used(settings) - {"strength_unit", *PANEL_SETTINGS}

