"""Per-pair preference losses on reward margins ([MixDPO, Eq. 1; Eq. 3]).

A *margin* is ``Δ = r(x, y_chosen) − r(x, y_rejected)``; for a policy ``r = log π_θ − log π_ref``
summed over completion tokens, with no β inside. Every loss here is per pair (no reduction), so the
caller chooses the mean, a weighted mean or a per-subgroup sum.

Objectives are ``nn.Module`` objects (they may own learnable strength parameters that the
optimiser must see) with ``forward(margin, batch=None) -> per-pair loss`` and
``metrics() -> dict[str, float]``.
:func:`build_objective` turns a config name and its settings into one; the registry
:data:`OBJECTIVES` maps each name to its class, which declares its settings and the per-pair
columns it reads; the DAHP objectives extend it further down this file and the group-robust
ones (``group_dpo``, ``group_mixdpo``) from :mod:`pluralign.group_robust`, imported at the end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pluralign.errors import ConfigError
from pluralign.numerics import log_point_expected_sigmoid
from pluralign.strength import (
    LOGNORMAL_METHODS,
    PARAMETERIZATIONS,
    STRENGTHS,
    Gamma,
    LogNormal,
    PointMass,
    StrengthDistribution,
)
from pluralign.validation import COUNT, NON_NEGATIVE, POSITIVE, check_number

# ----------------------------------------------------------------------------------------------
# Losses (pure functions)
# ----------------------------------------------------------------------------------------------


def dpo_loss(margin: Tensor, beta: float | Tensor) -> Tensor:
    """DPO loss per pair, ``−log σ(β·Δ)`` ([MixDPO, Eq. 1]; [DPO]).

    Computed as ``−logsigmoid(β·Δ)`` in at least float32 (bfloat16/float16 margins are upcast and
    the loss is float32), so it is finite for any finite margin. ``beta`` (a number, or a tensor
    broadcasting against ``margin``) must be finite and > 0, else :class:`ConfigError`.
    """
    if isinstance(beta, Tensor):
        if not bool((torch.isfinite(beta) & (beta > 0)).all()):
            raise ConfigError(f"dpo_loss: beta={beta.tolist()!r} has entries that are not finite "
                              "and > 0; use positive finite strengths")
    else:
        check_number(beta, "dpo_loss: beta", minimum=0, exclusive_minimum=True)
    return -log_point_expected_sigmoid(margin, beta)


def mixdpo_loss(margin: Tensor, strength: StrengthDistribution) -> Tensor:
    """MixDPO loss per pair, ``−log E_{β~p(β)}[σ(β·Δ)]`` ([MixDPO, Eq. 3]).

    The expectation is evaluated by the strength distribution in log space
    (:meth:`StrengthDistribution.log_expected_sigmoid`), which is finite for ``|Δ|`` up to 1e4.
    With ``PointMass(β)`` this is the very same computation as :func:`dpo_loss`, hence equal
    bit for bit.
    """
    if not isinstance(strength, StrengthDistribution):
        raise ConfigError(
            "mixdpo_loss needs a StrengthDistribution (e.g. pluralign.strength.Gamma(...) or "
            f"PointMass(beta=0.1)), got {type(strength).__name__} {strength!r}; for a fixed beta "
            "use dpo_loss(margin, beta)")
    return -strength.log_expected_sigmoid(margin)


# ----------------------------------------------------------------------------------------------
# Settings: what each objective declares
# ----------------------------------------------------------------------------------------------


def setting(default: Any, help: str, *, positive: bool = False,
            choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field for an objective setting: its default, its help and its valid range.

    ``positive`` asks for a finite value > 0, ``choices`` for one of the given strings; both are
    checked by :func:`check_settings` when the objective is built, with a message naming the
    setting. ``PreferenceConfig`` derives its objective fields (same name, same help) from these.
    """
    return field(default=default,
                 metadata={"help": help, "positive": positive, "choices": choices})


def _beta() -> Any:
    return setting(0.1, "Preference strength beta of the log-ratio reward (paper: 0.1).",
                   positive=True)


def check_settings(settings: Any) -> None:
    """Raise :class:`ConfigError` naming the first setting of ``settings`` out of its range."""
    for f in fields(settings):
        value, meta = getattr(settings, f.name), f.metadata
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{f.name}={value!r} is unknown; use one of "
                              f"{', '.join(meta['choices'])}")
        if meta.get("positive") and not (isinstance(value, int | float)
                                         and math.isfinite(value) and value > 0):
            raise ConfigError(f"{f.name}={value!r} is out of range; it must be > 0")


# ----------------------------------------------------------------------------------------------
# Objective objects
# ----------------------------------------------------------------------------------------------


class Objective(nn.Module):
    """A per-pair preference loss with optional learnable state.

    Subclasses implement ``forward(margin, batch=None) -> Tensor`` (per-pair losses, same shape as
    ``margin``) and ``metrics() -> dict[str, float]`` (what the trainer logs every step).
    ``batch`` carries per-pair side information some objectives need (e.g. ``pair_variance``).

    Each registered subclass declares what it is built from: ``Settings`` (a dataclass of
    :func:`setting` fields: name, type, default, help), ``columns`` (the per-pair dataset columns
    that ``batch`` must carry) and ``from_settings``; :meth:`used` names the settings a given
    choice reads (MixDPO's depend on its strength family).
    """

    name: str = "objective"
    Settings: type = object
    columns: tuple[str, ...] = ()
    #: Appended to the error for a setting this objective does not use.
    hint: str = ""

    @classmethod
    def from_settings(cls, settings: Any) -> Objective:
        raise NotImplementedError

    @classmethod
    def used(cls, settings: Any) -> set[str]:
        """Names of the settings this objective reads for ``settings`` (default: all)."""
        return {f.name for f in fields(settings)}

    @classmethod
    def choice(cls, settings: Any) -> str:
        """The choice that decides :meth:`used`, for error messages (default: none)."""
        return ""

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        raise NotImplementedError


@dataclass
class DPOSettings:
    """Settings of :class:`DPOObjective`."""

    beta: float = _beta()


class DPOObjective(Objective):
    """DPO with a fixed preference strength ``beta`` ([MixDPO, Eq. 1])."""

    name = "dpo"
    Settings = DPOSettings
    hint = "DPO has a fixed beta; use objective 'mixdpo' for a strength distribution."

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = check_number(beta, "DPO beta", **POSITIVE)

    @classmethod
    def from_settings(cls, settings: DPOSettings) -> Objective:
        return cls(settings.beta)

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        return dpo_loss(margin, self.beta)

    def metrics(self) -> dict[str, float]:
        return {"beta_mean": self.beta, "beta_var": 0.0}

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}"


@dataclass
class MixDPOSettings:
    """Settings of :class:`MixDPOObjective`; which ones it reads depends on ``strength``."""

    strength: str = setting("point", "Preference-strength family: 'point' (a fixed beta, equals "
                            "DPO), 'lognormal' or 'gamma'.", choices=tuple(STRENGTHS))
    learnable_strength: bool = setting(True, "Learn the strength distribution's parameters "
                                       "jointly with the policy; false gives the paper's "
                                       "'fixed parameters' baseline (lognormal, gamma).")
    beta: float = _beta()
    strength_mu: float = setting(-2.3, "Initial LogNormal location mu of log beta (paper: -2.3).")
    strength_sigma: float = setting(0.6, "Initial LogNormal scale sigma > 0 of log beta "
                                    "(paper: 0.6).", positive=True)
    lognormal_method: str = setting("quadrature", "How E[sigma(beta*margin)] is computed for "
                                    "LogNormal beta: 'quadrature' (a deterministic "
                                    "peak-centred trapezoidal rule) "
                                    "or 'monte_carlo' (the paper's K reparameterised samples).",
                                    choices=LOGNORMAL_METHODS)
    lognormal_num_points: int = setting(16, "Quadrature nodes or Monte Carlo samples K for "
                                        "LogNormal beta (paper: K = 16).", positive=True)
    strength_shape: float = setting(2.0, "Initial Gamma shape k > 0 (paper: 2.0).", positive=True)
    strength_rate: float = setting(16.7, "Initial Gamma rate lambda > 0 (paper: 16.7).",
                                   positive=True)
    strength_parameterization: str = setting(
        "softplus", "Coordinates the optimiser moves for lognormal/gamma: 'softplus' (the "
        "paper's: sigma, k, lambda = softplus of raw values), 'log' or 'mean_cv2' (log E[beta], "
        "log CV^2: scale-free; with a strength learning rate near the policy's it keeps the "
        "CV^2 signal that 'softplus' at 1e-4 loses, docs/diagnostic.md).",
        choices=PARAMETERIZATIONS)


#: strength family -> the MixDPO settings it reads (besides ``strength``).
STRENGTH_SETTINGS: dict[str, tuple[str, ...]] = {
    "point": ("beta",),
    "lognormal": ("learnable_strength", "strength_mu", "strength_sigma", "lognormal_method",
                  "lognormal_num_points", "strength_parameterization"),
    "gamma": ("learnable_strength", "strength_shape", "strength_rate",
              "strength_parameterization"),
}


class MixDPOObjective(Objective):
    """MixDPO: DPO marginalised over a preference-strength distribution ([MixDPO, Eq. 3]).

    Owns its :class:`~pluralign.strength.StrengthDistribution`, so a learnable strength's
    parameters are this module's parameters and reach the optimiser with the policy's.
    """

    name = "mixdpo"
    Settings = MixDPOSettings
    hint = "Each strength family reads only its own settings (see `pluralign train --help`)."

    def __init__(self, strength: StrengthDistribution) -> None:
        super().__init__()
        if not isinstance(strength, StrengthDistribution):
            raise ConfigError(
                f"MixDPOObjective needs a StrengthDistribution, got {type(strength).__name__}"
            )
        self.strength = strength

    @classmethod
    def used(cls, settings: MixDPOSettings) -> set[str]:
        return {"strength", *STRENGTH_SETTINGS[settings.strength]}

    @classmethod
    def choice(cls, settings: MixDPOSettings) -> str:
        return f" with strength={settings.strength!r}"

    @classmethod
    def from_settings(cls, s: MixDPOSettings) -> Objective:
        if s.strength == "lognormal":
            return cls(LogNormal(mu=s.strength_mu, sigma=s.strength_sigma,
                                 learnable=s.learnable_strength, method=s.lognormal_method,
                                 num_points=s.lognormal_num_points,
                                 parameterization=s.strength_parameterization))
        if s.strength == "gamma":
            return cls(Gamma(shape=s.strength_shape, rate=s.strength_rate,
                             learnable=s.learnable_strength,
                             parameterization=s.strength_parameterization))
        return cls(PointMass(beta=s.beta, learnable=False))

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        return mixdpo_loss(margin, self.strength)

    @torch.no_grad()
    def metrics(self) -> dict[str, float]:
        out = {
            "beta_mean": float(self.strength.mean()),
            "beta_var": float(self.strength.variance()),
        }
        out.update({f"strength/{k}": v for k, v in self.strength.params().items()})
        return out


# ----------------------------------------------------------------------------------------------
# Registry and factory
# ----------------------------------------------------------------------------------------------

#: name -> Objective subclass. Other objective families register themselves here (see the DAHP
#: section below).
OBJECTIVES: dict[str, type[Objective]] = {
    "dpo": DPOObjective,
    "mixdpo": MixDPOObjective,
}


def build_objective(name: str, **settings: Any) -> Objective:
    """Build the objective called ``name`` (one of :data:`OBJECTIVES`) from its settings.

    ``settings`` are the fields of the objective's ``Settings`` dataclass (the same names as in
    ``PreferenceConfig`` and the YAML recipes, e.g. ``strength``, ``strength_shape``,
    ``correction_alpha``); paper defaults apply to anything left out. An unknown name, a setting
    the objective does not use (e.g. ``strength_mu`` with ``strength="gamma"``) or a value out of
    range raises :class:`~pluralign.errors.ConfigError` naming it.

    Example::

        objective = build_objective("mixdpo", strength="gamma")   # Gamma(k=2, λ=16.7), learnable
        loss = objective(margins).mean()
    """
    try:
        cls = OBJECTIVES[name]
    except KeyError:
        raise ConfigError(
            f"unknown objective {name!r}; valid objectives: {', '.join(sorted(OBJECTIVES))}"
        ) from None
    declared = {f.name for f in fields(cls.Settings)}
    unknown = sorted(set(settings) - declared)
    if unknown:
        readers = objective_settings()
        where = "; ".join(f"{u} is read by {', '.join(readers[u][3])}" for u in unknown
                          if u in readers)
        raise ConfigError(f"objective {name!r} does not use {', '.join(unknown)} (it takes "
                          f"{', '.join(sorted(declared))}"
                          + (f"; {where}" if where else "") + f"). {cls.hint}".rstrip())
    values = cls.Settings(**settings)
    check_settings(values)
    unused = sorted(set(settings) - cls.used(values))
    if unused:
        raise ConfigError(f"objective {name!r}{cls.choice(values)} does not use "
                          f"{', '.join(unused)}; remove it. {cls.hint}".rstrip())
    return cls.from_settings(values)


def objective_settings() -> dict[str, tuple[Any, Any, str, list[str]]]:
    """Every setting some registered objective declares: name -> (type, default, help, users).

    One entry per name (``beta`` is shared by several objectives); ``users`` lists the objectives
    that declare it. ``PreferenceConfig`` builds its objective fields from this.
    """
    out: dict[str, tuple[Any, Any, str, list[str]]] = {}
    for name, cls in OBJECTIVES.items():
        hints = get_type_hints(cls.Settings)
        for f in fields(cls.Settings):
            entry = out.setdefault(f.name, (hints[f.name], f.default, f.metadata["help"], []))
            entry[3].append(name)
    return out


# ----------------------------------------------------------------------------------------------
# DAHP objectives (first-order-corrected DPO, agreement loss) — appended by the DAHP work
# ----------------------------------------------------------------------------------------------
# Notation ([DAHP]): h = β·Δ is the difference of the policy's induced rewards (Eq. 18) and
# s = σ(h). With user types u, the population preference is P(w≻l) = E_u σ(Δ_u) (Eq. 8), where
# Δ_u = r_u(w) − r_u(l) (β folded in). At the optimum π* of Eq. 10, h = E_u Δ_u (Eq. 11).

#: Default ε of :func:`corrected_dpo_loss`: where s ≥ ½ the corrected likelihood stays above it.
CORRECTION_FLOOR = 1e-6


def _upcast(margin: Tensor) -> Tensor:
    return margin if margin.dtype in (torch.float32, torch.float64) else margin.float()


def corrected_dpo_loss(
    margin: Tensor,
    variance: Tensor,
    alpha: float,
    beta: float = 0.1,
    floor: float = CORRECTION_FLOOR,
) -> Tensor:
    """First-order-corrected DPO loss per pair, ``−log(s + α·c)`` ([DAHP, §5.1; Eqs. 17–19]).

    Derivation. Expand ``E_u σ(Δ_u)`` around ``Δ̄ = E_u Δ_u`` to second order:
    ``P(w≻l) ≈ σ(Δ̄) + ½ σ''(Δ̄) Var_u(Δ_u)`` with ``σ'' = s(1−s)(1−2s)`` (Eq. 17; DPO keeps only
    the zeroth-order term, Eq. 12). The joint-likelihood model of §5.3 estimates the variance of
    the per-annotator *probability* ``V = Var_u σ(Δ_u)`` (see :func:`pair_variance`), and the
    first-order expansion ``σ(Δ_u) ≈ s + s(1−s)(Δ_u − Δ̄)`` gives ``Var_u Δ_u ≈ V / (s(1−s))²``
    (Lemma 5.3). Substituting, with the policy's ``h = β·margin`` in place of ``Δ̄`` (Eq. 11):

        ``q(h) = s + α·c``,   ``c = ½ (1 − 2s) · V / (s(1−s))``,   ``s = σ(β·margin)``.

    ``α = 1`` is the theory's value and ``α = 0`` is DPO; β enters only through ``h``. Note
    ``q(−h) = 1 − q(h)`` for the same ``V``, so ``q`` is a proper two-outcome likelihood.

    Keeping the log's argument in range, without moving the optimum. Far from the expansion
    point ``c`` is unbounded (``c → −∞`` as ``s → 1``), so ``q`` can leave ``[0, 1]`` and the raw
    loss is unbounded below. Only the likelihood is clipped: ``q ← max(q, ε)`` where ``s ≥ ½``
    (there ``c ≤ 0``) and ``q ← min(q, 1 − ε)`` where ``s < ½`` (there ``c ≥ 0``). The two rules
    mirror each other, so ``q(−h) = 1 − q(h)`` still holds, and α = 0 (or V = 0) is DPO exactly.
    The loss equals the raw corrected loss wherever ``ε ≤ q ≤ 1 − ε``, which is where its optimum
    lies (a cell's expected loss ``−P log q − (1−P) log(1−q)`` is smallest at ``q = P``), so the
    optimum is the raw corrected one for every α; the tests check that it is a stationary point
    of the raw loss in the proximity environment at α ∈ {1, 2, 5, 10}. (An earlier Bhatia–Davis
    cap ``V ≤ ρ·s(1−s)`` with ``ρ = min(1, 2(1−ε)/α)`` bound at the optimum for α ≳ 3.2 — in 34%
    of cells at α = 5 — and moved the population optimum by TV 8.4e-3.) To keep gradients
    finite where ``s(1−s)`` underflows, ``V/(s(1−s))`` is capped where ``|α·c| > 2``: there the
    clip binds either way, so the value is unchanged. The log is evaluated stably
    (``logaddexp`` of ``log s`` and ``log c`` for ``h < 0``).

    Args:
        margin: ``Δ`` per pair (policy log-ratio difference, no β inside).
        variance: ``V`` per pair, the type variance of the preference probability (≥ 0).
        alpha: correction strength ``α ≥ 0``.
        beta: DPO's β.
        floor: ``ε``: the corrected likelihood is kept in ``[ε, 1 − ε]`` where it is corrected.
    """
    if alpha < 0:
        raise ConfigError(f"corrected DPO alpha must be >= 0, got {alpha!r}")
    if not 0 < floor < 0.5:
        raise ConfigError(f"corrected DPO floor must be in (0, 0.5), got {floor!r}")
    h = beta * _upcast(margin)
    variance = variance.to(h.dtype).clamp(min=0.0)
    log_s, log_one_minus_s = F.logsigmoid(h), F.logsigmoid(-h)
    s = log_s.exp()
    tiny = torch.finfo(h.dtype).tiny
    spread = (log_s + log_one_minus_s).exp().clamp(min=tiny)         # s(1−s), never 0
    gap = 1.0 - 2.0 * s                                              # c = ½α·gap·V/spread
    # α·c = ½α·gap·V/spread with |α·c| ≤ 2: V/max(spread, |½α·gap|·V/2) never forms V/spread²
    # where s(1−s) underflows (∞·0 = NaN), and where it binds q is clipped anyway. The second
    # floor, √tiny, covers α·V ≈ 0 (α = 0 included), where the first is 0: the backward's
    # V/den² stays finite, and the value moves only where |h| > 354 (float64; 43 in float32)
    # and α·V < 3e-154 (2e-19), where the expansion has no meaning left (the true q jumps from
    # σ(h) at α·V = 0 to the floor ε for any α·V > e^{−|h|}). ½α multiplies last, so a tiny
    # α scales the backward down before any large factor, instead of after it (∞·α = ∞).
    half_alpha = 0.5 * alpha
    denominator = torch.maximum(spread, half_alpha * gap.abs() * variance / 2).clamp(min=tiny**0.5)
    correction = half_alpha * (gap * (variance / denominator))
    # h ≥ 0: s ≥ ½ and correction ≤ 0, so log q = log s + log1p(correction / s), q floored at ε.
    s_pos = s.clamp(min=0.5)                      # = s on this branch; keeps the other finite
    log_q_pos = log_s + torch.log1p(torch.maximum(correction / s_pos, floor / s_pos - 1))
    # h < 0: correction ≥ 0, so log q = logaddexp(log s, log correction), q capped at 1 − ε.
    ceiling = torch.log1p(torch.tensor(-floor, dtype=h.dtype, device=h.device))
    log_q_neg = torch.where(
        correction > 0,
        torch.minimum(torch.logaddexp(log_s, torch.log(correction.clamp(min=tiny))), ceiling),
        log_s)
    return -torch.where(h >= 0, log_q_pos, log_q_neg)


def agreement_loss(
    margin: Tensor, agreement: Tensor, num_types: int, beta: float = 0.1
) -> Tensor:
    """Consistent loss on items labelled by every type ([DAHP, §6; Eq. 20; Prop. 6.1]).

    ``ℓ = −[all chose w]·log σ(e·h) − [all chose l]·log σ(−e·h)``, ``h = β·margin``, ``e`` = number
    of (equally represented) types; items with any disagreement contribute 0.

    Derivation. Under BT, ``P(all chose w) = Π_u σ(Δ_u)`` and ``P(all chose l) = Π_u σ(−Δ_u)``,
    so conditioned on agreement ``P(w | agree) = 1 / (1 + Π_u e^{−Δ_u}) = σ(Σ_u Δ_u) = σ(e·Δ̄)``.
    At π*, ``h = Δ̄`` (Eq. 11), so this is a logistic likelihood in ``e·h`` whose minimiser is π*
    exactly (tested in the tabular infinite-data limit). A public implementation uses
    ``σ(e·(1 − h))`` in the second term, which is not consistent.

    Args:
        margin: ``Δ`` per pair (chosen minus rejected, no β inside).
        agreement: per pair +1 (all types chose the "chosen" response), −1 (all chose the
            "rejected" one) or 0 (they disagree).
        num_types: ``e``.
        beta: DPO's β.
    """
    if int(num_types) < 1:
        raise ConfigError(f"agreement loss needs num_types >= 1, got {num_types!r}")
    h = beta * _upcast(margin) * int(num_types)
    agreement = agreement.to(h.dtype)
    return -((agreement > 0) * F.logsigmoid(h) + (agreement < 0) * F.logsigmoid(-h))


def joint_preference_loss(
    first_margins: Tensor, second_margins: Tensor, class_logits: Tensor, beta: float = 1.0
) -> Tensor:
    """Cross-entropy of a latent-class joint-likelihood model ``J`` on paired preferences (§5.3).

    ``J(w₁≻l₁, w₂≻l₂) = Σ_k π_k σ(β m_k(w₁, l₁)) σ(β m_k(w₂, l₂))``, ``π = softmax(class_logits)``:
    the probability that one annotator (of unknown class ``k``) makes both observed choices.
    ``first_margins``/``second_margins`` are ``[..., K]`` per-class reward margins of the two pairs,
    oriented chosen-minus-rejected; returns ``−log J`` per row, computed with ``logsumexp``.
    """
    log_joint = (
        torch.log_softmax(class_logits, dim=-1)
        + F.logsigmoid(beta * _upcast(first_margins))
        + F.logsigmoid(beta * _upcast(second_margins))
    )
    return -torch.logsumexp(log_joint, dim=-1)


def pair_variance(margins: Tensor, class_logits: Tensor, beta: float = 1.0) -> Tensor:
    """Variance term of Lemma 5.3 (Eq. 19) from a joint-likelihood model: ``J(w≻l, w≻l) − P²``.

    The same pair labelled twice by one annotator gives ``J(w≻l, w≻l) = E_k σ_k²`` and J's
    marginal ``P(w≻l) = J(w≻l, w≻l) + J(w≻l, l≻w) = E_k σ_k`` (``σ_k = σ(β m_k)``), so the result
    is ``Var_k σ_k`` — the ``V`` that :func:`corrected_dpo_loss` expects. ``margins``: ``[..., K]``.
    """
    probs = torch.softmax(class_logits, dim=-1)
    sig = torch.sigmoid(beta * _upcast(margins))
    both = (probs * sig * sig).sum(dim=-1)
    marginal = (probs * sig).sum(dim=-1)
    return (both - marginal * marginal).clamp(min=0.0)


def _batch_field(batch: Mapping[str, Any] | None, key: str, owner: str) -> Tensor:
    if batch is None or key not in batch:
        raise ConfigError(f"{owner} needs batch[{key!r}] for every pair; the data collator or "
                          f"environment must provide it")
    return torch.as_tensor(batch[key])


@dataclass
class CorrectedDPOSettings:
    """Settings of :class:`CorrectedDPOObjective`."""

    beta: float = _beta()
    correction_alpha: float = setting(1.0, "Weight alpha >= 0 of the first-order variance "
                                      "correction (1 = the theory's value, 0 = DPO).")


class CorrectedDPOObjective(Objective):
    """First-order-corrected DPO reading ``batch["pair_variance"]`` (:func:`corrected_dpo_loss`)."""

    name = "corrected_dpo"
    Settings = CorrectedDPOSettings
    columns = ("pair_variance",)
    hint = "Corrected DPO has a fixed beta."

    @classmethod
    def from_settings(cls, settings: CorrectedDPOSettings) -> Objective:
        return cls(alpha=settings.correction_alpha, beta=settings.beta)

    def __init__(self, alpha: float = 1.0, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = check_number(beta, "corrected DPO beta", **POSITIVE)
        self.alpha = check_number(alpha, "corrected DPO correction_alpha", **NON_NEGATIVE)

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        variance = _batch_field(batch, "pair_variance", "CorrectedDPOObjective")
        return corrected_dpo_loss(margin, variance.to(margin.device), self.alpha, self.beta)

    def metrics(self) -> dict[str, float]:
        return {"beta_mean": self.beta, "beta_var": 0.0, "alpha": self.alpha}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}"


@dataclass
class AgreementSettings:
    """Settings of :class:`AgreementObjective`."""

    beta: float = _beta()
    agreement_num_types: int | None = setting(None, "Number of user types K that label every "
                                              "item (required by the agreement objective).")


class AgreementObjective(Objective):
    """Agreement-only consistent loss reading ``batch["agreement"]`` (:func:`agreement_loss`)."""

    name = "agreement"
    Settings = AgreementSettings
    columns = ("agreement",)
    hint = "The agreement loss has a fixed beta."

    @classmethod
    def from_settings(cls, settings: AgreementSettings) -> Objective:
        if settings.agreement_num_types is None:
            raise ConfigError("objective 'agreement' needs agreement_num_types (the number of "
                              "user types that label every item)")
        return cls(num_types=settings.agreement_num_types, beta=settings.beta)

    def __init__(self, num_types: int, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = check_number(beta, "agreement beta", **POSITIVE)
        self.num_types = check_number(num_types, "agreement_num_types", **COUNT)

    def forward(self, margin: Tensor, batch: Mapping[str, Any] | None = None) -> Tensor:
        agreement = _batch_field(batch, "agreement", "AgreementObjective")
        return agreement_loss(margin, agreement.to(margin.device), self.num_types, self.beta)

    def metrics(self) -> dict[str, float]:
        return {"beta_mean": self.beta, "beta_var": 0.0, "num_types": float(self.num_types)}

    def extra_repr(self) -> str:
        return f"num_types={self.num_types}, beta={self.beta:g}"


OBJECTIVES["corrected_dpo"] = CorrectedDPOObjective
OBJECTIVES["agreement"] = AgreementObjective


def repeat_label_variance(
    first: Tensor, second: Tensor, group: Tensor, num_groups: int
) -> tuple[Tensor, Tensor]:
    """Tabular estimate of Lemma 5.3's variance when annotators label the same pair twice.

    For annotator ``i`` of pair ``g`` let ``z_i1, z_i2 ∈ {0, 1}`` say whether each of its two
    labels chose the pair's first response, and ``s_i = z_i1 + z_i2``. The tabular joint
    likelihood gives ``J(w≻l, w≻l) = E[z_i1 z_i2]``, estimated by ``mean_i s_i(s_i−1)/2``, and
    ``P(w≻l)² = E[z_i z_j]`` for two *different* annotators, estimated without bias by the
    U-statistic ``(S² − Σ_i s_i²) / (4 m (m−1))`` (``S = Σ_i s_i``, ``m`` annotators). Their
    difference is an unbiased estimate of ``Var_u P_u(w≻l)`` (Eq. 19); it can be slightly
    negative by chance, so callers clamp (as :func:`corrected_dpo_loss` does). Groups with fewer
    than two annotators get 0 (no correction, i.e. plain DPO).

    Args:
        first, second: ``[n]`` labels (1 = chose the group's first response) of each annotator.
        group: ``[n]`` pair index of each annotator, in ``[0, num_groups)``.
        num_groups: number of pairs.

    Returns:
        ``(variance[num_groups], annotators[num_groups])``.
    """
    s = (first.to(torch.float64) + second.to(torch.float64))
    group = group.long()
    m = torch.bincount(group, minlength=num_groups).to(torch.float64)
    total = torch.bincount(group, weights=s, minlength=num_groups)
    squares = torch.bincount(group, weights=s * s, minlength=num_groups)
    both = torch.bincount(group, weights=s * (s - 1) / 2, minlength=num_groups)
    enough = m >= 2
    safe_m = m.clamp(min=2)
    variance = both / safe_m - (total * total - squares) / (4 * safe_m * (safe_m - 1))
    return torch.where(enough, variance, torch.zeros_like(variance)), m


# Group-robust objectives (group_dpo, group_mixdpo) register themselves in OBJECTIVES on import.
from pluralign import group_robust as _group_robust  # noqa: E402, F401
