"""Panel (annotator-level) mixed-logit kernels: ``log E_β Π_{j∈a} σ(β·Δ_j)`` per annotator ``a``.

When every pair an annotator labelled shares one strength β (the panel mixed logit: Train,
*Discrete Choice Methods with Simulation*, 2009, §6.7; [MixDPO, Fig. 1]'s "latent differences in
how sharply individuals distinguish between alternatives"), the likelihood of annotator ``a``'s
labels is

    L_a = E_β Π_{j∈a} σ(β Δ_j) = ∫ p(v) exp(Σ_{j∈a} log σ(e^v Δ_j)) dv,      v = log β,

with ``p(v)`` the density of ``log β``. Unlike the per-pair likelihood ``Π_j E_β σ(β Δ_j)``, the
dependence between one annotator's labels identifies the spread of β even when Δ comes from a
flexible model (no transform of Δ can produce it).

Evaluation (one code path for Gamma and LogNormal, in float64, entirely in log space: a product
of hundreds of sigmoids underflows). The log-integrand ``f_a(v) = log p(v) + Σ_j log σ(e^v Δ_j)``
is located per annotator — a few safeguarded Newton steps find its peak ``v*`` (started at the
best of a coarse scan around the prior's mode), its curvature gives a width ``w = (−f''(v*))^{−½}``,
and a doubling walk plus bisection finds, on each side, where ``f`` has fallen :data:`DROP` nats
below the peak (a higher point met on the walk restarts the search from there). On that range
the trapezoidal rule (geometrically convergent for this analytic integrand: the sigmoids' poles
lie at ``Im v = ±π/2``) is refined by halving its step, starting at ``h ≤ w``, until two
successive estimates of ``log L_a`` agree to :data:`TOLERANCE` for every annotator; the value is
``logsumexp_i(log w_i + f_a(v_i))``. Nodes are a detached (piecewise-constant) function of the
parameters and margins; as the rule has converged, differentiating the sum at fixed nodes gives
the gradient of the integral to the same accuracy (plain autograd: margins and every parameter,
and ``softplus`` raw coordinates as in :mod:`pluralign.numerics`). Accuracy against mpmath:
``docs/panel_kernel_accuracy.png`` (``bench/panel_accuracy.py``) and ``tests/test_panel.py``.

Cost: ``pairs × nodes`` log-sigmoids per refinement level (the first level has a step of at
most one width; a Gamma with small shape has a long left tail in ``log β`` and needs more nodes).
The peak search and the walk run without autograd; with gradients enabled, autograd records only
the refinement levels' sums.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pluralign.numerics import NumericsError, TensorLike

__all__ = [
    "DROP",
    "MAX_NODES",
    "PANEL_FAMILIES",
    "TOLERANCE",
    "log_gamma_panel_likelihood",
    "log_lognormal_panel_likelihood",
    "log_panel_likelihood",
    "log_point_panel_likelihood",
]

PANEL_FAMILIES = ("point", "lognormal", "gamma")
#: The range ends where the log-integrand is this many nats below its peak (e^−40 ≈ 4e-18).
DROP = 40.0
#: Refinement stops when two successive trapezoid estimates of log L_a agree to this.
TOLERANCE = 1e-13
#: Most nodes per annotator before the rule gives up and raises.
MAX_NODES = 2**14 + 1
_NEWTON_STEPS = 40
_BACKTRACK = 2.0 ** -torch.arange(0, 16, dtype=torch.float64)
_WALK = 2.0 ** torch.arange(-2, 17, dtype=torch.float64)
_BISECT = 32
#: Changes below this that stop shrinking under refinement are rounding, not discretisation.
_NOISE = 1e-11
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
#: Pairs × nodes evaluated at once in the detached passes (memory bound, ~32 MB per buffer).
_CHUNK = 1 << 22


# ----------------------------------------------------------------------------------------------
# Priors on v = log β
# ----------------------------------------------------------------------------------------------


class _Prior:
    """Log-density of ``v = log β`` at ``v = c + δ`` and its first two derivatives at ``c``.

    Nodes are a centre ``c`` (G,) per annotator plus offsets ``δ`` (G, K): the density is written
    in ``δ`` so that rounding ``v`` (|v| ulp ≈ 4e-16) is not amplified by a narrow prior (σ = 1e-4
    turns it into 4e-12 of noise in ``(v − μ)/σ``)."""

    def logpdf(self, c: Tensor, d: Tensor) -> Tensor:
        raise NotImplementedError

    def d1_d2(self, v: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def mode_width(self) -> tuple[float, float]:
        raise NotImplementedError


class _GammaPrior(_Prior):
    """β ~ Gamma(k, λ): ``log p(v) = k log λ − log Γ(k) + k v − λ e^v``."""

    def __init__(self, k: Tensor, lam: Tensor) -> None:
        self.k, self.lam = k, lam

    def logpdf(self, c: Tensor, d: Tensor) -> Tensor:
        k, lam = self.k, self.lam
        lam_ec = torch.exp(c + torch.log(lam)).unsqueeze(-1)
        at_c = (k * torch.log(lam) - torch.lgamma(k) + k * c).unsqueeze(-1) - lam_ec
        return at_c + k * d - lam_ec * torch.expm1(d)

    def d1_d2(self, v: Tensor) -> tuple[Tensor, Tensor]:
        e = torch.exp(v + torch.log(self.lam))
        return self.k - e, -e

    def mode_width(self) -> tuple[float, float]:
        k, lam = float(self.k.detach()), float(self.lam.detach())
        return math.log(k / lam), 1.0 / math.sqrt(k)


class _LogNormalPrior(_Prior):
    """β = exp(μ + σε): ``log p(v) = −(v − μ)²/(2σ²) − log σ − ½ log 2π``."""

    def __init__(self, mu: Tensor, sigma: Tensor) -> None:
        self.mu, self.sigma = mu, sigma

    def logpdf(self, c: Tensor, d: Tensor) -> Tensor:
        t = ((c - self.mu).unsqueeze(-1) + d) / self.sigma
        return -0.5 * t * t - torch.log(self.sigma) - _LOG_SQRT_2PI

    def d1_d2(self, v: Tensor) -> tuple[Tensor, Tensor]:
        s2 = self.sigma * self.sigma
        return -(v - self.mu) / s2, torch.full_like(v, -1.0) / s2

    def mode_width(self) -> tuple[float, float]:
        return float(self.mu.detach()), float(self.sigma.detach())


# ----------------------------------------------------------------------------------------------
# The log-integrand per annotator at a (G, K) array of nodes
# ----------------------------------------------------------------------------------------------


def _sum_logsig(c: Tensor, d: Tensor, m: Tensor, g: Tensor) -> Tensor:
    """``Σ_{j∈a} log σ(e^{c_a + δ_{a,i}} Δ_j)`` as a (G, K) array (autograd-friendly)."""
    z = torch.exp(c[g].unsqueeze(-1) + d[g]) * m.unsqueeze(-1)
    out = torch.zeros(d.shape, dtype=d.dtype, device=d.device)
    return out.index_add(0, g, F.logsigmoid(z))


@torch.no_grad()
def _f(c: Tensor, d: Tensor, m: Tensor, g: Tensor, prior: _Prior) -> Tensor:
    """Detached log-integrand at nodes ``c + δ`` (G, K), chunked over nodes to bound memory."""
    step = max(1, _CHUNK // max(1, m.numel()))
    parts = [_sum_logsig(c, d[:, i:i + step], m, g) for i in range(0, d.shape[1], step)]
    out = torch.cat(parts, dim=1) + prior.logpdf(c, d)
    return torch.nan_to_num(out, nan=-math.inf)


@torch.no_grad()
def _f_d1_d2(v: Tensor, m: Tensor, g: Tensor, prior: _Prior) -> tuple[Tensor, Tensor, Tensor]:
    """Log-integrand and its first two derivatives in ``v`` at one point per annotator."""
    z = torch.exp(v[g]) * m
    s_neg = torch.sigmoid(-z)
    a = z * s_neg  # d/dv log σ(e^v Δ)
    num_groups = v.shape[0]

    def group_sum(x: Tensor) -> Tensor:
        return torch.zeros(num_groups, dtype=v.dtype, device=v.device).index_add(0, g, x)

    p1, p2 = prior.d1_d2(v)
    f = group_sum(F.logsigmoid(z)) + prior.logpdf(v, torch.zeros_like(v).unsqueeze(-1))[:, 0]
    return f, group_sum(a) + p1, group_sum(a * (1 - z * torch.sigmoid(z))) + p2


@torch.no_grad()
def _newton(v: Tensor, m: Tensor, g: Tensor, prior: _Prior, width0: float) -> Tensor:
    """Safeguarded Newton ascent on ``f_a`` from ``v`` (one point per annotator): Newton's step
    where ``f'' < 0`` (else a prior-width step uphill), at most 8 prior widths, halved until
    ``f`` increases; an annotator stops when no halving increases ``f`` or its Newton step is
    below 1% of the local width."""
    backtrack = _BACKTRACK.to(v.device)
    for _ in range(_NEWTON_STEPS):
        f, d1, d2 = _f_d1_d2(v, m, g, prior)
        step = torch.where(d2 < 0, -d1 / d2.clamp(max=-1e-300), torch.sign(d1) * width0)
        step = step.clamp(-8 * width0, 8 * width0)
        # within 1% of a local width of the peak: the nodes need no better
        done = (d2 < 0) & (step.abs() * (-d2).clamp(min=0).sqrt() < 1e-2)
        if done.all():
            break
        offsets = step.unsqueeze(-1) * backtrack
        fc = _f(v, offsets, m, g, prior)
        better = fc > f.unsqueeze(-1)
        first = torch.where(better.any(-1), better.float().argmax(-1), -1)
        moved = (first >= 0) & ~done
        if not moved.any():
            break
        v = torch.where(moved, v + offsets.gather(1, first.clamp(min=0).unsqueeze(-1))[:, 0], v)
    return v


@torch.no_grad()
def _locate(m: Tensor, g: Tensor, num_groups: int, prior: _Prior) -> tuple[Tensor, Tensor]:
    """Integration range ``[lo, hi]`` per annotator (see the module docstring)."""
    mode, width0 = prior.mode_width()
    dtype, device = m.dtype, m.device
    scan = mode + width0 * torch.tensor([0.0, -1, 1, -2, 2, -4, 4, -8, 8, -16, 16, -32, 32, -64],
                                        dtype=dtype, device=device)
    walk = _WALK.to(device)
    start = scan.expand(num_groups, -1)
    fs = _f(torch.zeros(num_groups, dtype=dtype, device=device), start, m, g, prior)
    v = start.gather(1, fs.argmax(-1, keepdim=True))[:, 0]
    for _ in range(4):
        v = _newton(v, m, g, prior, width0)
        f0, _, d2 = _f_d1_d2(v, m, g, prior)
        w = torch.where(d2 < 0, (-d2.clamp(max=-1e-300)).rsqrt(), torch.full_like(v, width0))
        w = w.clamp(min=1e-12 * (1 + v.abs()))
        ends = []
        higher = torch.zeros_like(v, dtype=torch.bool)
        best_v, best_f = v.clone(), f0.clone()
        for sign in (-1.0, 1.0):
            pts = sign * w.unsqueeze(-1) * walk
            fw = _f(v, pts, m, g, prior)
            top, arg = fw.max(-1)
            up = top > f0 + 1e-9 * (1 + f0.abs())
            replace = up & (top > best_f)
            best_v = torch.where(replace, v + pts.gather(1, arg.unsqueeze(-1))[:, 0], best_v)
            best_f = torch.where(replace, top, best_f)
            higher |= up
            good = fw >= (f0 - DROP).unsqueeze(-1)
            # last walk point still above the threshold (−1: none, the first is already below)
            idx = torch.arange(walk.numel(), device=device)
            last = torch.where(good, idx, -1).max(-1).values
            if (last == walk.numel() - 1).any():
                raise NumericsError("panel likelihood: the integrand does not decay within "
                                    f"{float(walk[-1]):.0f} widths of its peak; please report")
            inner = torch.where(last >= 0, w * walk[last.clamp(min=0)], torch.zeros_like(w))
            outer = w * walk[last + 1]
            # the crossing between inner (above the threshold) and outer (below), to 1/32
            frac = torch.linspace(0.0, 1.0, _BISECT + 1, dtype=dtype, device=device)[1:]
            dist = inner.unsqueeze(-1) + (outer - inner).unsqueeze(-1) * frac
            below = _f(v, sign * dist, m, g, prior) < (f0 - DROP).unsqueeze(-1)
            below[:, -1] = True
            outer = dist.gather(1, below.float().argmax(-1, keepdim=True))[:, 0]
            ends.append(sign * outer)
        if not higher.any():
            return v, ends[0], ends[1], w
        v = torch.where(higher, best_v, v)
    raise NumericsError("panel likelihood: the peak search did not settle (multimodal integrand); "
                        "please report the margins")


def _trapezoid(lo: Tensor, hi: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Offsets (G, n) on ``[lo, hi]`` and the log-weights ``log(h·c_i)`` (c = ½ at the ends)."""
    t = torch.linspace(0.0, 1.0, n, dtype=lo.dtype, device=lo.device)
    v = lo.unsqueeze(-1) + (hi - lo).unsqueeze(-1) * t
    log_w = torch.log((hi - lo) / (n - 1)).unsqueeze(-1).expand(-1, n).clone()
    log_w[:, [0, -1]] -= math.log(2.0)
    return v, log_w


def _integrate(m: Tensor, g: Tensor, num_groups: int, prior: _Prior) -> Tensor:
    """``log ∫ exp(f_a)`` per annotator by the converged trapezoidal rule; differentiable."""
    centre, lo, hi, w = _locate(m, g, num_groups, prior)
    # smallest 2^p + 1 nodes with step ≤ w for every annotator
    need = float(((hi - lo) / w).max())
    n = 2 ** max(5, math.ceil(math.log2(max(need, 1.0)))) + 1
    previous, last_change = None, math.inf
    while True:
        if n > MAX_NODES:
            raise NumericsError(f"panel likelihood: the trapezoidal rule did not converge within "
                                f"{MAX_NODES} nodes; please report the margins and parameters")
        d, log_w = _trapezoid(lo, hi, n)
        if torch.is_grad_enabled():  # (autograd records only the sums, never the node search)
            current = torch.logsumexp(
                log_w + _sum_logsig(centre, d, m, g) + prior.logpdf(centre, d), -1)
        else:
            current = torch.logsumexp(log_w + _f(centre, d, m, g, prior), -1)
        value = current.detach()
        if previous is not None:
            change = float(((value - previous).abs() / (1 + value.abs())).max())
            # converged, or at the rounding floor (the change stopped shrinking)
            if change <= TOLERANCE or (change <= _NOISE and change >= 0.25 * last_change):
                return current
            last_change = change
        previous = value
        n = 2 * n - 1


# ----------------------------------------------------------------------------------------------
# Public boundary
# ----------------------------------------------------------------------------------------------


def _prepare(margin: Tensor, group: Tensor, num_groups: int | None):
    margin = torch.as_tensor(margin)
    group = torch.as_tensor(group)
    if margin.dim() != 1 or group.shape != margin.shape:
        raise NumericsError(f"panel likelihood: margin and group must be 1-D of the same length, "
                            f"got shapes {tuple(margin.shape)} and {tuple(group.shape)}")
    if group.dtype not in (torch.int64, torch.int32):
        raise NumericsError(f"panel likelihood: group must be an integer tensor (annotator index "
                            f"0..G-1), got {group.dtype}")
    group = group.long()
    if margin.numel() and int(group.min()) < 0:
        raise NumericsError("panel likelihood: group indices must be >= 0")
    seen = int(group.max()) + 1 if margin.numel() else 0
    if num_groups is None:
        num_groups = seen
    elif seen > num_groups:
        raise NumericsError(f"panel likelihood: group index {seen - 1} >= num_groups={num_groups}")
    out_dtype = margin.dtype if margin.dtype in (torch.float32, torch.float64) else torch.float32
    m = margin.to(torch.float64)
    if not bool(torch.isfinite(m).all()):
        bad = m.detach()[~torch.isfinite(m)][0].item()
        raise NumericsError(f"margin must be finite, got {bad} (check the policy/reference "
                            "log-probabilities)")
    return m, group, num_groups, out_dtype


def _param(name: str, value: TensorLike, softplus: bool, like: Tensor) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64, device=like.device)
    if t.dim() != 0:
        raise NumericsError(f"panel likelihood: {name} must be a scalar (one distribution for all "
                            f"annotators), got shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    value_t = F.softplus(t) if softplus else t
    number = float(value_t.detach())
    if not number > 0 or not math.isfinite(number):
        raise NumericsError(f"{name} must be finite and > 0, got {number}")
    return value_t


def _finish(out: Tensor, counts_zero: Tensor, out_dtype: torch.dtype) -> Tensor:
    # an annotator index with no pairs has likelihood 1 (log 0)
    return torch.where(counts_zero, torch.zeros_like(out), out).to(out_dtype)


def _empty_groups(group: Tensor, num_groups: int) -> Tensor:
    return torch.bincount(group, minlength=num_groups) == 0


def log_point_panel_likelihood(
    margin: Tensor, group: Tensor, beta: TensorLike, *, num_groups: int | None = None,
    softplus: bool = False,
) -> Tensor:
    """``Σ_{j∈a} log σ(β Δ_j)`` per annotator: the panel likelihood of a point mass (DPO), which
    is the per-pair likelihood summed by annotator. Arguments as in
    :func:`log_gamma_panel_likelihood`."""
    m, g, num_groups, out_dtype = _prepare(margin, group, num_groups)
    b = _param("beta", beta, softplus, m)
    out = torch.zeros(num_groups, dtype=m.dtype, device=m.device).index_add(
        0, g, F.logsigmoid(b * m))
    return out.to(out_dtype)


def log_gamma_panel_likelihood(
    margin: Tensor, group: Tensor, shape: TensorLike, rate: TensorLike, *,
    num_groups: int | None = None, softplus: bool = False,
) -> Tensor:
    """``log E_{β~Gamma(k, λ)} Π_{j∈a} σ(β Δ_j)`` per annotator ``a`` (panel mixed logit,
    Train 2009 §6.7, with [MixDPO, Eq. 3]'s Gamma strength; rate λ, mean k/λ).

    Args:
        margin: (N,) margins ``Δ_j = r(chosen) − r(rejected)``, any float dtype (computed in
            float64; returned in the margin's dtype, float32 for half precision).
        group: (N,) integer annotator index ``0..G−1`` of each pair (any order).
        shape, rate: scalar (0-dim) tensors or numbers; with ``softplus=True`` raw values whose
            softplus is the parameter (the convention of :mod:`pluralign.numerics`).
        num_groups: G (default ``max(group) + 1``); an index with no pairs gets ``0`` (= log 1).

    Returns:
        (G,) tensor of ``log L_a``, differentiable in ``margin``, ``shape`` and ``rate``.
    """
    m, g, num_groups, out_dtype = _prepare(margin, group, num_groups)
    prior = _GammaPrior(_param("shape", shape, softplus, m), _param("rate", rate, softplus, m))
    out = _integrate(m, g, num_groups, prior)
    return _finish(out, _empty_groups(g, num_groups), out_dtype)


def log_lognormal_panel_likelihood(
    margin: Tensor, group: Tensor, mu: TensorLike, sigma: TensorLike, *,
    num_groups: int | None = None, softplus: bool = False,
) -> Tensor:
    """``log E_{β=exp(μ+σε)} Π_{j∈a} σ(β Δ_j)`` per annotator ``a`` (panel mixed logit with a
    LogNormal strength, [MixDPO, §3]). ``softplus`` applies to ``sigma`` only (as for
    :func:`pluralign.numerics.log_lognormal_expected_sigmoid`); σ must be > 0 (use
    :func:`log_point_panel_likelihood` for σ = 0). Other arguments and the result as in
    :func:`log_gamma_panel_likelihood`."""
    m, g, num_groups, out_dtype = _prepare(margin, group, num_groups)
    mu_t = torch.as_tensor(mu, dtype=torch.float64, device=m.device).to(torch.float64)
    if mu_t.dim() != 0 or not math.isfinite(float(mu_t.detach())):
        raise NumericsError(f"mu must be a finite scalar, got {mu!r}")
    prior = _LogNormalPrior(mu_t, _param("sigma", sigma, softplus, m))
    out = _integrate(m, g, num_groups, prior)
    return _finish(out, _empty_groups(g, num_groups), out_dtype)


def log_panel_likelihood(
    margin: Tensor, group: Tensor, family: str, *, num_groups: int | None = None,
    softplus: bool = False, **params: TensorLike,
) -> Tensor:
    """Dispatch by family name: ``"point"`` (``beta``), ``"lognormal"`` (``mu``, ``sigma``) or
    ``"gamma"`` (``shape``, ``rate``) — the parameter names of :mod:`pluralign.strength`."""
    kernels = {"point": log_point_panel_likelihood, "lognormal": log_lognormal_panel_likelihood,
               "gamma": log_gamma_panel_likelihood}
    if family not in kernels:
        raise NumericsError(f"family must be one of {PANEL_FAMILIES}, got {family!r}")
    try:
        return kernels[family](margin, group, num_groups=num_groups, softplus=softplus, **params)
    except TypeError as exc:
        raise NumericsError(f"{family} panel likelihood: {exc}") from None
