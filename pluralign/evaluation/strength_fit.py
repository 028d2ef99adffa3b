"""Maximum-likelihood fit of the preference-strength distribution on fixed margins
([MixDPO, Eq. 3]).

For comparisons ``i`` with a fixed margin ``Δ_i = r(x, y_chosen) − r(x, y_rejected)`` (from a reward
model, or policy-vs-reference log-probs, or a synthetic population's true rewards), MixDPO's
likelihood of the observed labels is

    L(θ_β) = Π_i E_{β ~ p(β; θ_β)} [ σ(β · Δ_i) ]                                     (eq. 3)

i.e. a binary *mixed logit* with one random coefficient (β) on the single attribute Δ (Train 2009,
ch. 6): alternative "chosen" has utility ``β Δ_i + ε``, "rejected" ``0 + ε``. :func:`fit_strength`
maximises it over a LogNormal(μ, σ) or Gamma(k, λ) family (and a point mass, the DPO special case,
as the null of a likelihood-ratio test for heterogeneity) and bootstraps the estimates.

Identification, stated plainly:

* The labels are always "chosen", so the data are the signs of the margins relative to the labels.
  If every Δ_i > 0, the likelihood increases without bound as β grows (no finite MLE); if every
  Δ_i < 0, it is maximised by β → 0. The scale of β is pinned only by pairs on *both* sides: the
  rate at which labels disagree with the margin, as a function of |Δ|. Synthetic populations have
  both because each label is drawn from σ(β Δ); real margins from a reward model or a policy have
  both because models disagree with some labels. :func:`fit_strength` refuses one-signed margins.
* The *spread* of β is identified by the shape of ``P(agree | |Δ|)``: a random β turns the
  logistic curve into a flatter scale mixture of logistics. That signal is weaker than the scale:
  expect wide intervals below a few thousand comparisons, and when comparisons come in groups per
  annotator (one β per annotator), resample annotators (``clusters=``) — the number of annotators,
  not of comparisons, bounds the precision of the variance.
* β and Δ enter only through their product, so the mean and variance of β are in the units of the
  margins; the squared coefficient of variation ``CV² = Var β / (E β)²`` is scale free and is the
  quantity to compare across datasets whose margins come from different models. The fit works on
  margins divided by their median ``|Δ|`` (parameter bounds are then relative to the data's scale),
  so rescaling every margin by ``c`` rescales the fitted β by ``1/c`` and leaves CV² unchanged.

Panel likelihood (``groups=`` annotator ids). When each annotator's pairs share one β, the
likelihood is ``Π_a E_β Π_{j∈a} σ(β Δ_j)`` (the panel mixed logit, Train 2009 §6.7), evaluated
exactly by :mod:`pluralign.panel`. Per-pair β with a flexible margin model is not identified:
``E_β σ(βΔ) = G(Δ)`` for one symmetric link ``G``, and any other strength distribution with link
``G'`` fits equally well with margins ``G'⁻¹(G(Δ))``. The dependence between one annotator's labels
cannot be produced by any transform of Δ, so the panel fit identifies the spread of β even when the
margins come from a flexible model — through annotators with two or more pairs (an annotator with
one pair contributes ``E_β σ(βΔ)``, exactly as in the per-pair fit). Its bootstrap resamples
annotators.

Every fit carries :attr:`StrengthFit.identification`: which parameters ended on a bound of the
optimiser's box, whether the optimiser moved from its start, and whether the scale of β is pinned
by the data at all; each flag also adds a plain-language note to :attr:`StrengthFit.notes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import optimize, special, stats

from pluralign.errors import PluralignError
from pluralign.evaluation.bootstrap import percentile_interval
from pluralign.evaluation.errors import EvaluationError
from pluralign.numerics import log_gamma_expected_sigmoid, trapezoid_step
from pluralign.panel import log_panel_likelihood
from pluralign.strength import StrengthDistribution, build_strength

FAMILIES = ("lognormal", "gamma")
#: Likelihoods of a fit: β per comparison (eq. 3) or per annotator (panel).
LIKELIHOODS = ("per-pair", "panel")

#: Largest LogNormal σ the fit may return (CV² = e^{σ²} − 1 ≈ 2.7e43 there: a fit on this bound
#: is flagged, it says "heavier tail than any LogNormal we allow", not a number to report).
SIGMA_MAX = 10.0

#: Node counts tried, smallest first, for the LogNormal trapezoidal rule in the fit.
NODE_TIERS = (48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)

#: Box on the unconstrained parameters in standardised units (margins / median |Δ|):
#: (μ, log σ) and (log k, log λ). It keeps the optimiser finite when the data push a parameter to
#: its boundary (σ → 0 or k → ∞ is the collapse to a point mass).
_BOUNDS = {
    "lognormal": [(-15.0, 15.0), (math.log(1e-4), math.log(SIGMA_MAX))],
    "gamma": [(math.log(0.05), math.log(1e5)), (math.log(1e-6), math.log(1e8))],
}
_PARAM_NAMES = {"lognormal": ("mu", "sigma"), "gamma": ("shape", "rate"), "point": ("beta",)}
#: Distance (in the unconstrained coordinates) within which a parameter counts as on its
#: (lower, upper) bound. The likelihood is flat as the spread vanishes, so the optimiser stops
#: short of σ → 0 or k → ∞: σ < 1e-3 (CV² < 1e-6) or k > 1e4 (CV² < 1e-4) count as on the bound.
_BOUND_TOL = {
    "lognormal": [(1e-3, 1e-3), (math.log(10.0), 1e-3)],
    "gamma": [(1e-3, math.log(10.0)), (1e-3, 1e-3)],
    "point": [(1e-3, 1e-3)],
}
#: Standardised point-mass β outside this range: labels carry (almost) no information on the
#: scale — they agree with the margin's sign almost surely, or are at chance.
_SCALE_RANGE = (1e-2, 1e2)
#: Fewer margins than this on the minority side leave the scale unidentified.
_MIN_MINORITY = 10


def lognormal_num_points(sigma: float, mu: float = 0.0, most_negative: float = 0.0) -> int:
    """Nodes of the trapezoidal rule that make ``log E σ(βΔ)`` accurate to ~1e-9 (LogNormal β).

    Three conditions on the rule's step ``h`` (:func:`pluralign.numerics.trapezoid_step`) and
    half-width ``H = h(N−1)/2``, from the error analysis of the trapezoidal rule for integrands
    analytic in a strip (Trefethen & Weideman 2014, §5):

    * discretisation ``exp(−π²/(σh)) ≤ 1e-9`` (poles of σ(z) at ``Im ε = ±π/(2σ)``): ``σh ≤ 0.45``;
    * for the most negative margin ``Δ⁻`` the integrand ``φ(ε)·σ(−e^{μ+σε}|Δ⁻|)`` peaks at
      ``ε* = −W(x)/σ`` (Lambert W, ``x = σ²e^μ|Δ⁻|``) with width ``w = (1 + W(x))^{−1/2}``,
      while the kernel centres its rule at ``c = −log1p(x)/σ``: ``h ≤ 0.9 w`` and
      ``H ≥ |ε* − c| + 7w``;
    * the Gaussian itself: ``H ≥ 7``.

    Returns the first of :data:`NODE_TIERS` meeting all three; raises :class:`EvaluationError`
    if none does (the fit itself uses the adaptive rule of :mod:`pluralign.panel` instead).
    """
    x = sigma * sigma * math.exp(min(mu, 700.0)) * max(-most_negative, 0.0)
    w_x = float(np.real(special.lambertw(x))) if x > 0 else 0.0
    offset = abs(w_x - math.log1p(x)) / sigma if sigma > 0 else 0.0
    width = 1.0 / math.sqrt(1.0 + w_x)
    for n in NODE_TIERS:
        h = trapezoid_step(n)
        if (sigma * h <= 0.45 and h <= 0.9 * width
                and h * (n - 1) / 2 >= max(7.0, offset + 7.0 * width)):
            return n
    raise EvaluationError(
        f"no trapezoidal rule of up to {NODE_TIERS[-1]} nodes is accurate for LogNormal σ = "
        f"{sigma:.3g}, μ = {mu:.3g} and margin {most_negative:.3g}; use "
        "pluralign.panel.log_lognormal_panel_likelihood (one pair per group), which adapts")


@dataclass
class StrengthFit:
    """A fitted strength distribution with bootstrap intervals (see :func:`fit_strength`).

    Attributes:
        family: ``"lognormal"`` or ``"gamma"``.
        params: raw distribution parameters (``{"mu","sigma"}`` or ``{"shape","rate"}``), in the
            units of the margins given.
        mean, variance, cv2: E β, Var β and Var β / (E β)² of the fitted distribution.
        mean_ci, variance_ci, cv2_ci: percentile bootstrap intervals (``None`` if ``n_boot=0``).
        loglik: maximised log-likelihood.
        point_beta, point_loglik: the point-mass (DPO) fit.
        heterogeneity_pvalue: likelihood-ratio test of H0 "β is a point mass"; the null is on the
            boundary, so the statistic is referred to ½χ²₀ + ½χ²₁ (Self & Liang 1987).
        n, n_negative: comparisons used and how many have a negative margin.
        identification: ``at_bound`` (names of parameters on a bound of the optimiser's box),
            ``not_moved`` (the best run ended at its start), ``scale_unidentified`` (the labels do
            not pin the scale of β: too few margins on the minority side, or the point-mass fit
            says the labels follow the margin's sign almost surely or are at chance).
        notes: warnings (each identification flag, weak identification, failed resamples).
        scale: the median ``|Δ|`` the fit standardised the margins by.
        likelihood: ``"per-pair"`` (β drawn per comparison, eq. 3) or ``"panel"`` (one β per
            annotator, ``groups=``).
        n_annotators, n_single: annotators in a panel fit and how many of them have one pair
            (``None`` for a per-pair fit).
        bootstrap_failures: resamples whose refit failed or had one-signed margins.
        cv2_se: sandwich standard error of CV² (``H⁻¹BH⁻¹`` over the resampling units: clusters,
            annotators in a panel fit, else comparisons; delta method), the one
            :func:`cv2_difference_test` and :func:`~pluralign.evaluation.power.separation_power`
            use; ``nan`` when the fit is on a bound of its box.
    """

    family: str
    params: dict[str, float]
    mean: float
    variance: float
    cv2: float
    loglik: float
    point_beta: float
    point_loglik: float
    heterogeneity_pvalue: float
    n: int
    n_negative: int
    level: float
    mean_ci: tuple[float, float] | None = None
    variance_ci: tuple[float, float] | None = None
    cv2_ci: tuple[float, float] | None = None
    identification: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    scale: float = 1.0
    likelihood: str = "per-pair"
    n_annotators: int | None = None
    n_single: int | None = None
    bootstrap_failures: int = 0
    cv2_se: float = math.nan
    #: bootstrap draws of (mean, variance), one row per resample (for comparisons between fits)
    samples: np.ndarray | None = field(default=None, repr=False)

    def distribution(self, num_points: int | None = None) -> StrengthDistribution:
        """The fitted distribution as a (frozen) :mod:`pluralign.strength` module.

        ``num_points`` sets the LogNormal rule's nodes (see :func:`lognormal_num_points`).
        """
        extra = {"num_points": num_points} if num_points and self.family == "lognormal" else {}
        return build_strength(self.family, learnable=False, **self.params, **extra)

    @property
    def identified(self) -> bool:
        """No identification flag is raised."""
        ident = self.identification
        return not (ident.get("at_bound") or ident.get("not_moved")
                    or ident.get("scale_unidentified") or ident.get("panel_uninformative"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("samples")
        for key in ("mean_ci", "variance_ci", "cv2_ci"):
            out[key] = list(out[key]) if out[key] is not None else None
        out["cv2_se"] = self.cv2_se if math.isfinite(self.cv2_se) else None  # (JSON has no NaN)
        return out


@dataclass
class _Data:
    """What the likelihood needs: standardised margins, the unit each belongs to and the number
    of units. Per-pair: the distinct margins (a unit each; weights are their counts). Panel:
    every margin, ``group`` its annotator index (weights per annotator)."""

    margins: torch.Tensor
    group: torch.Tensor | None
    units: int


def _log_lik_terms(theta: torch.Tensor, data: _Data, family: str) -> torch.Tensor:
    """Per-unit log-likelihood at unconstrained parameters ``theta``: ``log E_β σ(β Δ_i)`` per
    distinct margin, or ``log E_β Π_{j∈a} σ(β Δ_j)`` per annotator (panel). LogNormal terms come
    from the adaptive rule of :mod:`pluralign.panel` (one pair per group when per-pair), exact to
    ~1e-13 for any margin and σ."""
    m = data.margins
    if family == "point":
        terms = F.logsigmoid(theta[0].exp() * m)
        if data.group is None:
            return terms
        return torch.zeros(data.units, dtype=m.dtype).index_add(0, data.group, terms)
    if family == "gamma" and data.group is None:
        return log_gamma_expected_sigmoid(m, theta[0].exp(), theta[1].exp())
    group = data.group if data.group is not None else torch.arange(m.numel())
    params = ({"mu": theta[0], "sigma": theta[1].exp()} if family == "lognormal"
              else {"shape": theta[0].exp(), "rate": theta[1].exp()})
    return log_panel_likelihood(m, group, family, num_groups=data.units, **params)


def _theta(params: dict[str, float], family: str) -> np.ndarray:
    """Inverse of :func:`_params`: unconstrained coordinates of raw parameters."""
    if family == "lognormal":
        return np.array([params["mu"], math.log(params["sigma"])])
    if family == "gamma":
        return np.array([math.log(params["shape"]), math.log(params["rate"])])
    return np.array([math.log(params["beta"])])


def log_likelihood(margins: Any, family: str, params: dict[str, float],
                   groups: Sequence[Any] | None = None) -> float:
    """``Σ_i log E_{β~p(·; params)} σ(β Δ_i)`` (eq. 3), or with ``groups`` (annotator ids) the
    panel ``Σ_a log E_β Π_{j∈a} σ(β Δ_j)`` — the quantity :func:`fit_strength` maximises."""
    m = _as_float64(margins)
    if groups is None:
        data = _Data(torch.as_tensor(m, dtype=torch.float64), None, m.size)
    else:
        codes, _ = group_codes(groups, m.size)
        data = _Data(torch.as_tensor(m, dtype=torch.float64), torch.as_tensor(codes),
                     int(codes.max()) + 1)
    theta = torch.as_tensor(_theta(params, family), dtype=torch.float64)
    with torch.no_grad():
        return float(_log_lik_terms(theta, data, family).sum())


def _maximise(data: _Data, weights: torch.Tensor, family: str,
              starts: Sequence[Sequence[float]], bounds) -> tuple[np.ndarray, float, bool]:
    """Best of bounded Newton-CG runs from ``starts``.

    Returns (theta, weighted log-likelihood, whether the best run ended at its start).
    """

    def negll(x: np.ndarray) -> tuple[float, np.ndarray]:
        theta = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        value = -(weights * _log_lik_terms(theta, data, family)).sum()
        (grad,) = torch.autograd.grad(value, theta)
        return float(value.detach()), grad.numpy()

    best: tuple[np.ndarray, float, bool] | None = None
    for start in starts:
        x0 = np.asarray(start, float)
        # TNC: bounded Newton-CG in plain C (L-BFGS-B's BLAS threads thrash on busy machines)
        res = optimize.minimize(negll, x0, jac=True, method="TNC", bounds=bounds,
                                options={"maxfun": 500, "ftol": 1e-11, "gtol": 1e-8})
        if best is None or -res.fun > best[1]:
            best = (res.x, -float(res.fun), bool(np.allclose(res.x, x0, rtol=0, atol=1e-8)))
    assert best is not None
    return best


def _params(theta: np.ndarray, family: str, scale: float = 1.0) -> dict[str, float]:
    """Raw parameters in the margins' units from standardised coordinates (β = β_std / scale)."""
    if family == "lognormal":
        return {"mu": float(theta[0] - math.log(scale)), "sigma": float(math.exp(theta[1]))}
    return {"shape": float(math.exp(theta[0])), "rate": float(math.exp(theta[1]) * scale)}


def _moments(theta: np.ndarray, family: str, scale: float = 1.0) -> tuple[float, float]:
    dist = build_strength(family, learnable=False, **_params(theta, family, scale))
    return float(dist.mean()), float(dist.variance())


def _as_float64(margins: Any) -> np.ndarray:
    """Margins of any float dtype (torch tensors too, also bfloat16 or requiring grad)."""
    if isinstance(margins, torch.Tensor):
        return margins.detach().to("cpu", torch.float64).numpy().ravel()
    try:
        return np.asarray(margins, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise EvaluationError(f"fit_strength: margins must be numbers ({exc})") from None


def group_codes(groups: Sequence[Any], n: int, what: str = "groups") -> tuple[np.ndarray, int]:
    """Integer codes 0..G−1 of annotator ids (or cluster labels); refuses missing ids."""
    values = pd.Series(list(groups) if not isinstance(groups, pd.Series) else groups.to_list())
    if len(values) != n:
        raise EvaluationError(f"fit_strength: {len(values)} {what} labels for {n} margins; give "
                              "one label per margin")
    missing = np.flatnonzero(values.isna().to_numpy())
    if missing.size:
        raise EvaluationError(f"fit_strength: {missing.size} {what} labels are missing (rows "
                              f"{missing[:10].tolist()}); drop those rows or fill the ids")
    _, codes = np.unique(values.astype(str).to_numpy(), return_inverse=True)
    return codes.astype(np.int64), int(codes.max()) + 1


def _check_margins(margins: Any) -> np.ndarray:
    m = _as_float64(margins)
    if m.size == 0:
        raise EvaluationError("fit_strength: no margins given")
    bad = np.flatnonzero(~np.isfinite(m))
    if bad.size:
        raise EvaluationError(f"fit_strength: {bad.size} margins are NaN or infinite (positions "
                              f"{bad[:10].tolist()}); drop them before fitting")
    if not (m < 0).any() or not (m > 0).any():
        side = "positive" if (m > 0).any() else "non-positive"
        raise EvaluationError(
            f"fit_strength: all {m.size} margins are {side}, so the strength scale is not "
            "identified (the likelihood is monotone in β). The fit needs comparisons on both "
            "sides: margins from a model that disagrees with some labels, or labels drawn at "
            "random given the margin. Check the sign convention: Δ = r(chosen) − r(rejected).")
    return m


def _on_bounds(theta: np.ndarray, bounds, family: str) -> list[str]:
    out = []
    for t, (lo, hi), (tol_lo, tol_hi), name in zip(theta, bounds, _BOUND_TOL[family],
                                                   _PARAM_NAMES[family], strict=True):
        if t - lo < tol_lo:
            out.append(f"{name} (lower)")
        elif hi - t < tol_hi:
            out.append(f"{name} (upper)")
    return out


#: Fewer annotators with two or more pairs than this: the panel fit cannot see the
#: within-annotator dependence that identifies the spread.
MIN_MULTI_ANNOTATORS = 10
#: Level of the likelihood-ratio test of β = 0 (every preference probability ½) against the
#: point-mass fit, ``2 (ℓ_point − n log ½) ~ χ²₁``: at or above it the labels carry no
#: information on the scale of β and no moment of β is estimable.
CHANCE_TEST_LEVEL = 0.05
_NO_SPREAD = {"lognormal": "sigma (lower)", "gamma": "shape (upper)"}


def _identification(family: str, theta: np.ndarray, not_moved: bool, point_std: float,
                    point_at_bound: bool, minority: int, multi: int | None, chance_p: float
                    ) -> tuple[dict[str, Any], list[str]]:
    """Identification flags of a fit and one note per raised flag (``multi``: annotators with
    two or more pairs in a panel fit, ``None`` per-pair)."""
    at_bound = _on_bounds(theta, _BOUNDS[family], family)
    scale_bad = (minority < _MIN_MINORITY or point_at_bound
                 or not _SCALE_RANGE[0] <= point_std <= _SCALE_RANGE[1])
    panel_bad = multi is not None and multi < MIN_MULTI_ANNOTATORS
    at_chance = chance_p >= CHANCE_TEST_LEVEL
    notes = []
    if at_chance:
        notes.append(f"the labels are no more likely under any β > 0 than under β = 0 "
                     f"(likelihood-ratio test p = {chance_p:.3g}): the strength scale is not "
                     "identified, so mean, variance and CV² of β are not estimable; check the "
                     "margins' scale and sign convention")
    spread_bound = [b for b in at_bound if b == _NO_SPREAD[family]]
    other_bound = [b for b in at_bound if b != _NO_SPREAD[family]]
    if spread_bound:
        notes.append(f"{spread_bound[0]} on its no-spread bound: the maximum-likelihood CV² is "
                     "essentially 0; whether the spread is really small is for the interval and "
                     "the point-mass test to say (see the verdict)")
    if other_bound:
        notes.append(f"{', '.join(other_bound)} on the bound of the fit's parameter box: the "
                     "likelihood keeps improving past it (outliers, or a tail heavier than the "
                     "family allows), so mean, variance and CV² are limits, not estimates")
    if not_moved:
        notes.append("the optimiser did not move from its start: the likelihood is flat there "
                     "and the reported parameters are the start, not an estimate")
    if scale_bad:
        notes.append(f"the scale of β is not identified: {minority} margins on the minority "
                     f"side, point-mass β·median|Δ| = {point_std:.3g} (labels follow the margin's "
                     "sign almost surely, or are at chance); mean and variance are not estimates")
    if panel_bad:
        notes.append(f"only {multi} annotators have two or more pairs: the panel fit cannot see "
                     "the within-annotator dependence that identifies the spread of β")
    return {"at_bound": at_bound, "not_moved": not_moved,
            "scale_unidentified": scale_bad or at_chance, "labels_at_chance": at_chance,
            "panel_uninformative": panel_bad}, notes


def _starts(family: str, point_log_beta: float) -> list[list[float]]:
    """Cold starts around the point-mass fit: three spreads (CV² ≈ 0.04, 0.6, 2.5 / 1.4, 0.5,
    0.1), never the fitted values."""
    if family == "lognormal":
        return [[point_log_beta, math.log(s)] for s in (0.2, 0.7, 1.5)]
    point_std = math.exp(point_log_beta)
    return [[math.log(k), math.log(k / point_std)] for k in (0.7, 2.0, 10.0)]


#: Median |margin| the fit accepts: β ~ 1/scale and Var β ~ 1/scale² must stay in float64.
MARGIN_SCALE_RANGE = (1e-100, 1e100)


def fit_strength(
    margins: Sequence[float] | np.ndarray | torch.Tensor,
    family: str = "lognormal",
    *,
    groups: Sequence[Any] | None = None,
    n_boot: int = 200,
    level: float = 0.95,
    clusters: Sequence[Any] | None = None,
    seed: int = 0,
) -> StrengthFit:
    """Fit ``p(β)`` by maximum likelihood on fixed margins: per pair ``Π_i E_β σ(β Δ_i)``
    (eq. 3), or with ``groups`` the panel ``Π_a E_β Π_{j∈a} σ(β Δ_j)``.

    Args:
        margins: ``Δ_i = r(chosen) − r(rejected)`` per comparison (both signs must occur); any
            float dtype, numpy or torch (detached and read in float64).
        family: ``"lognormal"`` (β = exp(μ + σ ε)) or ``"gamma"`` (shape k, rate λ).
        groups: optional annotator id per comparison: β is shared by each annotator's pairs
            (panel mixed logit; identifies the spread even with flexible margins) and the
            bootstrap resamples annotators.
        n_boot: bootstrap refits for the intervals (an int >= 0; 0 skips them); each refit
            starts cold (the resample's point-mass fit, CV² ≈ 0.5), never from the fitted values.
        level: confidence level of the percentile intervals.
        clusters: optional cluster label per comparison (e.g. annotator id); the bootstrap then
            resamples clusters, which is right when β is shared within a cluster. With
            ``groups``, each annotator must lie in one cluster.
        seed: bootstrap seed.
    """
    if family not in FAMILIES:
        raise EvaluationError(f"fit_strength: family must be one of {FAMILIES}, got {family!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise EvaluationError(f"fit_strength: n_boot={n_boot!r} is invalid; use a whole number "
                              ">= 0 of bootstrap refits (0 skips the intervals)")
    m_np = _check_margins(margins)
    scale = float(np.median(np.abs(m_np[m_np != 0])))
    if not MARGIN_SCALE_RANGE[0] <= scale <= MARGIN_SCALE_RANGE[1]:
        raise EvaluationError(f"fit_strength: the margins' median |Δ| is {scale:.3g}, so β would "
                              f"be of order {1 / scale:.3g} and its moments leave float64; "
                              "rescale the margins into [1e-100, 1e100] (β scales inversely)")
    notes: list[str] = []
    n_neg = int((m_np < 0).sum())
    minority = min(n_neg, int((m_np > 0).sum()))
    if _MIN_MINORITY <= minority < 20:
        notes.append(f"only {minority} margins on the minority side: the scale of β is weakly "
                     "identified")
    cluster_codes = None if clusters is None else group_codes(clusters, m_np.size, "cluster")[0]
    multi = n_annotators = n_single = None
    if groups is None:
        # The likelihood depends on the data only through the distinct margins and their counts.
        values, inverse = np.unique(m_np / scale, return_inverse=True)
        data = _Data(torch.as_tensor(values, dtype=torch.float64), None, values.size)
        weights = torch.as_tensor(np.bincount(inverse, minlength=values.size), dtype=torch.float64)
        resample_codes, unit_of = (np.arange(m_np.size) if cluster_codes is None
                                   else cluster_codes), inverse
    else:
        codes, n_annotators = group_codes(groups, m_np.size)
        sizes = np.bincount(codes, minlength=n_annotators)
        n_single = int((sizes == 1).sum())
        multi = n_annotators - n_single
        if n_single:
            notes.append(f"{n_single} of {n_annotators} annotators have a single pair: they "
                         "inform the scale of β like per-pair data, not its spread")
        data = _Data(torch.as_tensor(m_np / scale, dtype=torch.float64), torch.as_tensor(codes),
                     n_annotators)
        weights = torch.ones(n_annotators, dtype=torch.float64)
        if cluster_codes is None:
            resample_codes = np.arange(n_annotators)
        else:
            per_annotator = pd.DataFrame({"a": codes, "c": cluster_codes}).groupby("a")["c"]
            if (per_annotator.nunique() > 1).any():
                raise EvaluationError("fit_strength: an annotator (groups) appears in several "
                                      "clusters; clusters must contain whole annotators")
            resample_codes = per_annotator.first().to_numpy()
        unit_of = np.arange(n_annotators)

    # Point mass (DPO) fit in standardised units: one-dimensional, starts around β·|Δ| = 1. Its
    # panel and per-pair likelihoods are the same (a point mass makes the pairs independent).
    point_bounds = [(-20.0, 20.0)]
    point_theta, point_ll, _ = _maximise(data, weights, "point", [[-2.0], [0.0], [2.0]],
                                         point_bounds)
    point_std = math.exp(point_theta[0])
    theta, ll, not_moved = _maximise(data, weights, family, _starts(family, point_theta[0]),
                                     _BOUNDS[family])
    identification, flag_notes = _identification(
        family, theta, not_moved, point_std,
        bool(_on_bounds(point_theta, point_bounds, "point")), minority, multi,
        chance_p=float(stats.chi2.sf(max(0.0, 2 * (point_ll - m_np.size * math.log(0.5))), 1)))
    notes.extend(flag_notes)
    mean, variance = _moments(theta, family, scale)
    lr = max(0.0, 2 * (ll - point_ll))
    fit = StrengthFit(
        family=family, params=_params(theta, family, scale), mean=mean, variance=variance,
        cv2=variance / mean**2, loglik=ll, point_beta=point_std / scale, point_loglik=point_ll,
        heterogeneity_pvalue=float(0.5 * stats.chi2.sf(lr, 1)) if lr > 0 else 1.0,
        n=int(m_np.size), n_negative=n_neg, level=level, identification=identification,
        notes=notes, scale=scale, likelihood="per-pair" if groups is None else "panel",
        n_annotators=n_annotators, n_single=n_single,
    )
    if not identification["at_bound"]:
        fit.cv2_se = _cv2_se(data, weights, theta, family, unit_of, resample_codes)
    if n_boot > 0:
        _bootstrap(fit, data, unit_of, resample_codes, n_boot, seed)
    return fit


def _log_cv2_gradient(theta: np.ndarray, family: str) -> np.ndarray:
    """``∇_θ log CV²``: Gamma CV² = 1/k = e^{−θ₀}; LogNormal CV² = e^{σ²} − 1, σ = e^{θ₁}."""
    if family == "gamma":
        return np.array([-1.0, 0.0])
    s2 = math.exp(2 * theta[1])
    return np.array([0.0, 2 * s2 * math.exp(s2) / math.expm1(s2)])


def _cv2_se(data: _Data, weights: torch.Tensor, theta: np.ndarray, family: str,
            unit_of: np.ndarray, resample_codes: np.ndarray, step: float = 1e-3) -> float:
    """Sandwich standard error of CV² at the MLE ``theta`` (see :attr:`StrengthFit.cv2_se`).

    Per-unit scores and the Hessian by central differences of the (exact) per-unit
    log-likelihood (9 evaluations); the score of each resampling unit is the sum over its
    elements (``unit_of`` maps an element to its likelihood unit, ``resample_codes`` to its
    resampling unit), so ``B`` is right when β is shared within a resampling unit.
    """
    def terms(t: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _log_lik_terms(torch.as_tensor(t, dtype=torch.float64), data, family).numpy()

    w = weights.numpy()
    e = np.eye(2) * step
    plus = [terms(theta + e[j]) for j in range(2)]
    minus = [terms(theta - e[j]) for j in range(2)]
    centre = float(w @ terms(theta))
    scores = np.stack([(plus[j] - minus[j]) / (2 * step) for j in range(2)], axis=1)
    hess = np.empty((2, 2))
    for j in range(2):
        hess[j, j] = (w @ plus[j] - 2 * centre + w @ minus[j]) / step**2
    corners = [float(w @ terms(theta + a * e[0] + b * e[1])) for a, b in
               ((1, 1), (1, -1), (-1, 1), (-1, -1))]
    hess[0, 1] = hess[1, 0] = (corners[0] - corners[1] - corners[2] + corners[3]) / (4 * step**2)
    per_element = scores[unit_of]  # (elements, 2)
    per_resample = np.zeros((int(resample_codes.max()) + 1, 2))
    np.add.at(per_resample, resample_codes, per_element)
    inv = np.linalg.pinv(-hess)
    cov = inv @ (per_resample.T @ per_resample) @ inv
    g = _log_cv2_gradient(theta, family)
    var = float(g @ cov @ g)
    cv2 = _moments(theta, family)[1] / _moments(theta, family)[0] ** 2
    return cv2 * math.sqrt(var) if var >= 0 else math.nan


def cv2_difference_test(a: StrengthFit, b: StrengthFit) -> dict[str, float]:
    """Wald test of equal CV² for two independently fitted datasets (same family):
    ``z = (ĉ_a − ĉ_b)/√(se_a² + se_b²)`` with the sandwich standard errors
    (:attr:`StrengthFit.cv2_se`), two-sided p-value. The test ``compare_heterogeneity`` reports
    and ``separation_power`` simulates. ``nan`` when either fit is on a bound."""
    if a.family != b.family:
        raise EvaluationError(f"cv2_difference_test: CV² of a {a.family} and a {b.family} fit "
                              "are not comparable; fit both with one family")
    se = math.hypot(a.cv2_se, b.cv2_se)
    z = (a.cv2 - b.cv2) / se if se > 0 else math.nan
    return {"z": z, "pvalue": float(2 * stats.norm.sf(abs(z))) if math.isfinite(z) else math.nan}


def _bootstrap(fit: StrengthFit, data: _Data, unit_of: np.ndarray, resample_codes: np.ndarray,
               n_boot: int, seed: int) -> None:
    """Refit on multinomial resamples of the resampling units (comparisons, clusters or
    annotators), each from a cold start: the resample's own point-mass fit and the middle spread
    of :func:`_starts` (CV² ≈ 0.5). A warm start at the fitted values would leave a fit on the
    no-spread bound there (the likelihood is flat in that direction) and give a zero-width
    interval (issue 22: "collapsed" with CI [1e-5, 1e-5] at true CV² 0.1).

    ``unit_of`` maps each element the codes index (comparison, or annotator in a panel) to its
    likelihood unit (distinct margin, or annotator); ``resample_codes`` maps it to its resampling
    unit.
    """
    rng = np.random.default_rng(seed)
    k = int(resample_codes.max()) + 1
    samples, failures = [], 0
    for _ in range(n_boot):
        draws = rng.multinomial(k, np.full(k, 1.0 / k))[resample_codes]
        w = np.bincount(unit_of, weights=draws, minlength=data.units)
        weights = torch.as_tensor(w, dtype=torch.float64)
        used = data.margins[weights > 0] if data.group is None else data.margins[
            weights[data.group] > 0]
        if not (used < 0).any() or not (used > 0).any():
            failures += 1
            continue
        try:
            p_theta, _, _ = _maximise(data, weights, "point", [[-2.0], [0.0], [2.0]],
                                      [(-20.0, 20.0)])
            t, _, _ = _maximise(data, weights, fit.family, _starts(fit.family, p_theta[0])[1:2],
                                _BOUNDS[fit.family])
        except PluralignError:
            failures += 1
            continue
        samples.append(_moments(t, fit.family, fit.scale))
    fit.bootstrap_failures = failures
    if failures:
        fit.notes.append(f"{failures} of {n_boot} bootstrap resamples had one-signed margins "
                         "or failed to refit and were skipped")
    if not samples:
        return
    arr = np.array(samples)
    fit.samples = arr
    fit.mean_ci = percentile_interval(arr[:, 0], fit.level)
    fit.variance_ci = percentile_interval(arr[:, 1], fit.level)
    fit.cv2_ci = percentile_interval(arr[:, 1] / arr[:, 0] ** 2, fit.level)
