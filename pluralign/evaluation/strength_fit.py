"""Maximum-likelihood fit of the preference-strength distribution on fixed margins (seeds/001 eq.3).

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
  quantity to compare across datasets whose margins come from different models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import optimize, stats

from pluralign.evaluation.bootstrap import percentile_interval
from pluralign.evaluation.errors import EvaluationError
from pluralign.numerics import log_gamma_expected_sigmoid, log_lognormal_expected_sigmoid
from pluralign.strength import StrengthDistribution, build_strength

FAMILIES = ("lognormal", "gamma")

#: Gauss–Hermite nodes for the LogNormal expectation during fitting (more than training's 16:
#: the fit explores large σ where 16 nodes lose accuracy).
FIT_QUADRATURE_POINTS = 48

#: Box on the unconstrained parameters (log σ, log k, log λ, μ): keeps the optimiser finite when
#: the data push a parameter to its boundary (σ → 0 or k → ∞ is the collapse to a point mass).
_BOUNDS = {
    "lognormal": [(-15.0, 15.0), (math.log(1e-4), math.log(10.0))],
    "gamma": [(math.log(0.05), math.log(1e5)), (math.log(1e-6), math.log(1e8))],
}


@dataclass
class StrengthFit:
    """A fitted strength distribution with bootstrap intervals (see :func:`fit_strength`).

    Attributes:
        family: ``"lognormal"`` or ``"gamma"``.
        params: raw distribution parameters (``{"mu","sigma"}`` or ``{"shape","rate"}``).
        mean, variance, cv2: E β, Var β and Var β / (E β)² of the fitted distribution.
        mean_ci, variance_ci, cv2_ci: percentile bootstrap intervals (``None`` if ``n_boot=0``).
        loglik: maximised log-likelihood.
        point_beta, point_loglik: the point-mass (DPO) fit.
        heterogeneity_pvalue: likelihood-ratio test of H0 "β is a point mass"; the null is on the
            boundary, so the statistic is referred to ½χ²₀ + ½χ²₁ (Self & Liang 1987).
        n, n_negative: comparisons used and how many have a negative margin.
        notes: warnings (weak identification, parameters at their bounds, failed resamples).
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
    notes: list[str] = field(default_factory=list)
    #: bootstrap draws of (mean, variance), one row per resample (for comparisons between fits)
    samples: np.ndarray | None = field(default=None, repr=False)

    def distribution(self) -> StrengthDistribution:
        """The fitted distribution as a (frozen) :mod:`pluralign.strength` module."""
        return build_strength(self.family, learnable=False, **self.params)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("samples")
        for key in ("mean_ci", "variance_ci", "cv2_ci"):
            out[key] = list(out[key]) if out[key] is not None else None
        return out


def _log_lik_terms(theta: torch.Tensor, margins: torch.Tensor, family: str) -> torch.Tensor:
    """Per-comparison ``log E_β σ(β Δ_i)`` at unconstrained parameters ``theta``."""
    if family == "lognormal":
        return log_lognormal_expected_sigmoid(margins, theta[0], theta[1].exp(),
                                              num_points=FIT_QUADRATURE_POINTS)
    if family == "gamma":
        return log_gamma_expected_sigmoid(margins, theta[0].exp(), theta[1].exp())
    return F.logsigmoid(theta[0].exp() * margins)


def _maximise(margins: torch.Tensor, weights: torch.Tensor, family: str,
              starts: Sequence[Sequence[float]], bounds) -> tuple[np.ndarray, float]:
    """Best of L-BFGS-B runs from ``starts``; returns (theta, weighted log-likelihood)."""

    def negll(x: np.ndarray) -> tuple[float, np.ndarray]:
        theta = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        value = -(weights * _log_lik_terms(theta, margins, family)).sum()
        (grad,) = torch.autograd.grad(value, theta)
        return float(value.detach()), grad.numpy()

    best: tuple[np.ndarray, float] | None = None
    for start in starts:
        # TNC: bounded Newton-CG in plain C (L-BFGS-B's BLAS threads thrash on busy machines)
        res = optimize.minimize(negll, np.asarray(start, float), jac=True, method="TNC",
                                bounds=bounds, options={"maxfun": 500, "ftol": 1e-11,
                                                        "gtol": 1e-8})
        if best is None or -res.fun > best[1]:
            best = (res.x, -float(res.fun))
    assert best is not None
    return best


def _params(theta: np.ndarray, family: str) -> dict[str, float]:
    if family == "lognormal":
        return {"mu": float(theta[0]), "sigma": float(math.exp(theta[1]))}
    return {"shape": float(math.exp(theta[0])), "rate": float(math.exp(theta[1]))}


def _moments(theta: np.ndarray, family: str) -> tuple[float, float]:
    dist = build_strength(family, learnable=False, **_params(theta, family))
    return float(dist.mean()), float(dist.variance())


def _check_margins(margins: Any) -> np.ndarray:
    m = np.asarray(margins, dtype=float).ravel()
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


def fit_strength(
    margins: Sequence[float] | np.ndarray,
    family: str = "lognormal",
    *,
    n_boot: int = 200,
    level: float = 0.95,
    clusters: Sequence[Any] | None = None,
    seed: int = 0,
) -> StrengthFit:
    """Fit ``p(β)`` by maximum likelihood of ``Π_i E_β σ(β Δ_i)`` on fixed margins (eq. 3).

    Args:
        margins: ``Δ_i = r(chosen) − r(rejected)`` per comparison (both signs must occur).
        family: ``"lognormal"`` (β = exp(μ + σ ε)) or ``"gamma"`` (shape k, rate λ).
        n_boot: bootstrap refits for the intervals (0 skips them).
        level: confidence level of the percentile intervals.
        clusters: optional cluster label per comparison (e.g. annotator id); the bootstrap then
            resamples clusters, which is right when β is shared within a cluster.
        seed: bootstrap seed.
    """
    if family not in FAMILIES:
        raise EvaluationError(f"fit_strength: family must be one of {FAMILIES}, got {family!r}")
    m_np = _check_margins(margins)
    # The likelihood depends on the data only through the distinct margins and their counts.
    values, inverse = np.unique(m_np, return_inverse=True)
    margins_t = torch.as_tensor(values, dtype=torch.float64)
    counts = torch.as_tensor(np.bincount(inverse, minlength=values.size), dtype=torch.float64)
    notes: list[str] = []
    n_neg = int((m_np < 0).sum())
    if min(n_neg, int((m_np > 0).sum())) < 20:
        notes.append(f"only {min(n_neg, int((m_np > 0).sum()))} margins on the minority side: the "
                     "scale of β is weakly identified")

    # Point mass (DPO) fit: one-dimensional, from a grid of starts covering the margin scale.
    scale = 1.0 / float(np.median(np.abs(m_np[m_np != 0])))
    point_bounds = [(math.log(scale) - 20, math.log(scale) + 20)]
    point_starts = [[math.log(scale) + s] for s in (-2.0, 0.0, 2.0)]
    point_theta, point_ll = _maximise(margins_t, counts, "point", point_starts, point_bounds)
    beta0 = math.exp(point_theta[0])

    if family == "lognormal":
        starts = [[math.log(beta0), math.log(s)] for s in (0.2, 0.7, 1.5)]
    else:
        starts = [[math.log(k), math.log(k / beta0)] for k in (0.7, 2.0, 10.0)]
    theta, ll = _maximise(margins_t, counts, family, starts, _BOUNDS[family])
    no_spread = (theta[1] - _BOUNDS["lognormal"][1][0] < 1e-3 if family == "lognormal"
                 else _BOUNDS["gamma"][0][1] - theta[0] < 1e-3)
    if no_spread:
        notes.append("the fit puts no spread in β: it has collapsed to a point mass")
    mean, variance = _moments(theta, family)
    lr = max(0.0, 2 * (ll - point_ll))
    fit = StrengthFit(
        family=family, params=_params(theta, family), mean=mean, variance=variance,
        cv2=variance / mean**2, loglik=ll, point_beta=beta0, point_loglik=point_ll,
        heterogeneity_pvalue=float(0.5 * stats.chi2.sf(lr, 1)) if lr > 0 else 1.0,
        n=int(m_np.size), n_negative=n_neg, level=level, notes=notes,
    )
    if n_boot > 0:
        _bootstrap(fit, margins_t, inverse, theta, clusters, n_boot, seed)
    return fit


def _bootstrap(fit: StrengthFit, margins: torch.Tensor, inverse: np.ndarray, theta: np.ndarray,
               clusters: Sequence[Any] | None, n_boot: int, seed: int) -> None:
    """Refit on multinomial resamples (of comparisons or clusters), warm-started at the MLE.

    ``margins`` are the distinct margins and ``inverse`` maps each comparison to its margin.
    """
    rng = np.random.default_rng(seed)
    n = inverse.size
    if clusters is None:
        codes, k = np.arange(n), n
    else:
        if len(clusters) != n:
            raise EvaluationError(f"fit_strength: {len(clusters)} cluster labels for {n} margins")
        _, codes = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
        k = int(codes.max()) + 1
    samples = []
    for _ in range(n_boot):
        w = np.bincount(inverse, weights=rng.multinomial(k, np.full(k, 1.0 / k))[codes],
                        minlength=margins.numel())
        used = margins[torch.as_tensor(w > 0)]
        if not (used < 0).any() or not (used > 0).any():
            continue
        weights = torch.as_tensor(w, dtype=torch.float64)
        t, _ = _maximise(margins, weights, fit.family, [theta], _BOUNDS[fit.family])
        samples.append(_moments(t, fit.family))
    if len(samples) < n_boot:
        fit.notes.append(f"{n_boot - len(samples)} bootstrap resamples had one-signed margins "
                         "and were skipped")
    if not samples:
        return
    arr = np.array(samples)
    fit.samples = arr
    fit.mean_ci = percentile_interval(arr[:, 0], fit.level)
    fit.variance_ci = percentile_interval(arr[:, 1], fit.level)
    fit.cv2_ci = percentile_interval(arr[:, 1] / arr[:, 0] ** 2, fit.level)
