"""Preference-strength distributions p(β) for mixed-logit (MixDPO) losses ([MixDPO, §3]).

Each distribution is an ``nn.Module``. With ``learnable=True`` its raw parameters are
``nn.Parameter`` s (trained jointly with the policy, as in the paper); otherwise buffers.
Positivity holds by construction: σ, k, λ (and a learnable β) are ``softplus`` of an unconstrained
raw parameter, initialised with the inverse softplus so the initial values are the requested ones.
Parameters are stored in float64; the kernels in :mod:`pluralign.numerics` compute in float64
and return the margin's dtype.

Paper defaults: ``PointMass(β=0.1)`` (DPO), ``LogNormal(μ=−2.3, σ=0.6)``,
``Gamma(k=2.0, λ=16.7)`` (λ is a *rate*: mean k/λ ≈ 0.12).

``parameterization`` (LogNormal and Gamma) chooses the coordinates an optimiser moves:

* ``"softplus"`` (default, the paper's): σ, or k and λ, are ``softplus`` of raw values. Adam and
  RMSprop move a raw value by about the learning rate per step, so at the paper's 1e-4 a raw
  λ ≈ 16.7 moves by ~0.6% over 1k steps: the distribution can hardly change scale.
* ``"log"``: log σ, or log k and log λ — a step changes the parameter by a fixed *fraction*.
* ``"mean_cv2"``: log E[β] and log CV² (CV² = Var β / (E β)²), scale-free coordinates that separate
  the mean (which drifts with the margins, since β and Δ enter only as a product) from the spread
  the heterogeneity diagnostic reads. For Gamma ``k = 1/CV²``, ``λ = k/E[β]``; for LogNormal
  ``σ² = log(1 + CV²)``, ``μ = log E[β] − σ²/2``.

All three describe the same family and start from the same distribution; only the training
dynamics differ (see ``docs/diagnostic.md``).
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pluralign.errors import ConfigError
from pluralign.numerics import (
    LOGNORMAL_METHODS,
    gamma_expected_sigmoid,
    log_gamma_expected_sigmoid,
    log_lognormal_expected_sigmoid,
    log_point_expected_sigmoid,
    lognormal_expected_sigmoid,
)
from pluralign.panel import (
    log_gamma_panel_likelihood,
    log_lognormal_panel_likelihood,
    log_point_panel_likelihood,
)

__all__ = [
    "StrengthDistribution",
    "PointMass",
    "LogNormal",
    "Gamma",
    "STRENGTHS",
    "build_strength",
    "PARAMETERIZATIONS",
]

#: Coordinates of a learnable LogNormal or Gamma (see the module docstring).
PARAMETERIZATIONS = ("softplus", "log", "mean_cv2")


def _parameterization_repr(value: str) -> str:
    return "" if value == "softplus" else f", parameterization={value!r}"


def _check_parameterization(value: str, family: str) -> str:
    if value not in PARAMETERIZATIONS:
        raise ConfigError(f"{family} parameterization must be one of {PARAMETERIZATIONS}, "
                          f"got {value!r}")
    return value


def _inverse_softplus(value: float) -> float:
    """``y`` with ``softplus(y) = value`` (value > 0), accurate for small and large values."""
    return value + math.log(-math.expm1(-value))


def _validated(name: str, value: float, family: str, *, allow_zero: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{family} {name} must be a number, got {value!r}") from None
    ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{family} {name} must be finite and {bound}, got {value!r}")
    return value


class StrengthDistribution(nn.Module):
    """Base class: a distribution p(β) over preference strengths β > 0.

    Subclasses implement :meth:`log_expected_sigmoid`, :meth:`mean`, :meth:`variance`,
    :meth:`posterior_mean`, :meth:`sample` and :meth:`params`.
    """

    family: str = ""

    def __init__(self, learnable: bool) -> None:
        super().__init__()
        self.learnable = bool(learnable)

    def _register(self, name: str, value: float) -> None:
        tensor = torch.tensor(value, dtype=torch.float64)
        if self.learnable:
            self.register_parameter(name, nn.Parameter(tensor))
        else:
            self.register_buffer(name, tensor)

    def expected_sigmoid(self, margin: Tensor) -> Tensor:
        """``E_{β~p}[σ(β·Δ)]`` per pair: the probability that the chosen response wins."""
        return torch.exp(self.log_expected_sigmoid(margin))

    def log_expected_sigmoid(self, margin: Tensor) -> Tensor:
        """``log E_{β~p}[σ(β·Δ)]`` per pair, finite for ``|Δ|`` up to 1e4."""
        raise NotImplementedError

    def log_panel_likelihood(self, margin: Tensor, group: Tensor,
                             num_groups: int | None = None) -> Tensor:
        """``log E_{β~p} Π_{j∈a} σ(β·Δ_j)`` per annotator ``a`` (one β shared by each annotator's
        pairs, the panel mixed logit): ``group`` holds each pair's annotator index 0..G−1, the
        result has shape (G,). Exact to ~1e-13 in float64 (see :mod:`pluralign.panel`; a
        LogNormal uses that adaptive rule whatever its ``method``)."""
        raise NotImplementedError

    def mean(self) -> Tensor:
        """``E[β]`` as a 0-dim tensor."""
        raise NotImplementedError

    def variance(self) -> Tensor:
        """``Var[β]`` as a 0-dim tensor."""
        raise NotImplementedError

    def posterior_mean(self, margin: Tensor) -> Tensor:
        """``E[β | chosen ≻ rejected, Δ] = E[β σ(βΔ)] / E[σ(βΔ)]`` per pair."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent draws of β (float64 tensor of shape ``[n]``)."""
        raise NotImplementedError

    def params(self) -> dict[str, float]:
        """The raw distribution parameters as plain floats (what metrics and reports log)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        inner = ", ".join(f"{k}={v:.4g}" for k, v in self.params().items())
        return f"{inner}, learnable={self.learnable}"


class PointMass(StrengthDistribution):
    """A single preference strength β (standard DPO, [MixDPO, Eq. 1]).

    ``learnable=False`` (default) keeps β exactly as given, so MixDPO with ``PointMass(β)`` is
    bit-for-bit DPO; ``learnable=True`` trains ``β = softplus(raw)``.
    """

    family = "point"

    def __init__(self, beta: float = 0.1, learnable: bool = False) -> None:
        super().__init__(learnable)
        beta = _validated("beta", beta, "PointMass")
        if learnable:
            self._register("raw_beta", _inverse_softplus(beta))
        else:
            self._register("beta_value", beta)

    @property
    def beta(self) -> Tensor:
        return F.softplus(self.raw_beta) if self.learnable else self.beta_value

    def log_expected_sigmoid(self, margin: Tensor) -> Tensor:
        """``log σ(β·Δ)`` — the same function :func:`~pluralign.objectives.dpo_loss` negates."""
        return log_point_expected_sigmoid(margin, self.beta)

    def log_panel_likelihood(self, margin: Tensor, group: Tensor,
                             num_groups: int | None = None) -> Tensor:
        return log_point_panel_likelihood(margin, group, self.beta, num_groups=num_groups)

    def mean(self) -> Tensor:
        return self.beta

    def variance(self) -> Tensor:
        return torch.zeros_like(self.beta)

    def posterior_mean(self, margin: Tensor) -> Tensor:
        return self.beta.expand(torch.as_tensor(margin).shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return self.beta.expand(int(n))

    def params(self) -> dict[str, float]:
        return {"beta": float(self.beta.detach())}


class LogNormal(StrengthDistribution):
    """``β = exp(μ + σ ε)``, ε ~ N(0, 1), σ = softplus(raw σ) ([MixDPO, §3; App. B]).

    ``method="quadrature"`` (default) evaluates ``E[σ(βΔ)]`` deterministically with
    ``num_points`` nodes; ``method="monte_carlo"`` is the paper's reparameterised estimator with
    K = ``num_points`` fresh samples per pair and call (Eq. 7–8), drawn from ``generator``.
    """

    family = "lognormal"

    def __init__(
        self,
        mu: float = -2.3,
        sigma: float = 0.6,
        learnable: bool = True,
        method: str = "quadrature",
        num_points: int = 16,
        generator: torch.Generator | None = None,
        parameterization: str = "softplus",
    ) -> None:
        super().__init__(learnable)
        self.parameterization = _check_parameterization(parameterization, "LogNormal")
        try:
            mu = float(mu)
        except (TypeError, ValueError):
            raise ConfigError(f"LogNormal mu must be a number, got {mu!r}") from None
        if not math.isfinite(mu):
            raise ConfigError(f"LogNormal mu must be finite, got {mu!r}")
        sigma = _validated("sigma", sigma, "LogNormal")
        if method not in LOGNORMAL_METHODS:
            raise ConfigError(
                f"LogNormal method must be one of {LOGNORMAL_METHODS}, got {method!r}"
            )
        if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 1:
            raise ConfigError(f"LogNormal num_points must be an integer >= 1, got {num_points!r}")
        self.method = method
        self.num_points = num_points
        self.generator = generator
        if parameterization == "mean_cv2":
            self._register("log_mean", mu + sigma * sigma / 2)
            self._register("log_cv2", math.log(math.expm1(sigma * sigma)))
        else:
            self._register("mu", mu)
            if parameterization == "softplus":
                self._register("raw_sigma", _inverse_softplus(sigma))
            else:
                self._register("log_sigma", math.log(sigma))

    def __getattr__(self, name: str):
        # μ is a stored parameter except in (log-mean, log-CV²) coordinates, where it is derived
        if name == "mu" and self.__dict__.get("parameterization") == "mean_cv2":
            return self.log_mean - self.sigma**2 / 2
        return super().__getattr__(name)

    @property
    def sigma(self) -> Tensor:
        if self.parameterization == "softplus":
            return F.softplus(self.raw_sigma)
        if self.parameterization == "log":
            return torch.exp(self.log_sigma)
        return torch.sqrt(torch.log1p(torch.exp(self.log_cv2)))

    def _kernel_args(self) -> tuple[Tensor, Tensor, bool]:
        # softplus: the kernel applies it itself (one autograd node per call, not two)
        if self.parameterization == "softplus":
            return self.mu, self.raw_sigma, True
        return self.mu, self.sigma, False

    def log_expected_sigmoid(self, margin: Tensor) -> Tensor:
        mu, sigma, softplus = self._kernel_args()
        return log_lognormal_expected_sigmoid(
            margin, mu, sigma, self.num_points, self.method, self.generator, softplus=softplus
        )

    def expected_sigmoid(self, margin: Tensor) -> Tensor:
        mu, sigma, softplus = self._kernel_args()
        return lognormal_expected_sigmoid(
            margin, mu, sigma, self.num_points, self.method, self.generator, softplus=softplus
        )

    def log_panel_likelihood(self, margin: Tensor, group: Tensor,
                             num_groups: int | None = None) -> Tensor:
        mu, sigma, softplus = self._kernel_args()
        return log_lognormal_panel_likelihood(margin, group, mu, sigma, num_groups=num_groups,
                                              softplus=softplus)

    def mean(self) -> Tensor:
        return torch.exp(self.mu + self.sigma**2 / 2)

    def variance(self) -> Tensor:
        s2 = self.sigma**2
        return torch.expm1(s2) * torch.exp(2 * self.mu + s2)

    def posterior_mean(self, margin: Tensor) -> Tensor:
        """Exponential tilting: ``E[β σ(βΔ)] = E[β]·E_{LogNormal(μ+σ², σ)}[σ(βΔ)]``."""
        tilted = log_lognormal_expected_sigmoid(
            margin, self.mu + self.sigma**2, self.sigma, self.num_points, self.method,
            self.generator,
        )
        return torch.exp(torch.log(self.mean()) + tilted - self.log_expected_sigmoid(margin))

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(int(n), generator=generator, dtype=self.mu.dtype, device=self.mu.device)
        return torch.exp(self.mu + self.sigma * eps)

    def params(self) -> dict[str, float]:
        return {"mu": float(self.mu.detach()), "sigma": float(self.sigma.detach())}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, method={self.method!r}, num_points={self.num_points}"
                + _parameterization_repr(self.parameterization))


class Gamma(StrengthDistribution):
    """``β ~ Gamma(shape k, rate λ)``: density ``λ^k β^{k−1} e^{−λβ}/Γ(k)``, mean ``k/λ``.

    ``E[σ(βΔ)]`` has the closed form of [MixDPO, Eq. 4–5], evaluated exactly by
    :func:`~pluralign.numerics.gamma_expected_sigmoid`. ``k = softplus(raw k)``,
    ``λ = softplus(raw λ)``.
    """

    family = "gamma"

    def __init__(self, shape: float = 2.0, rate: float = 16.7, learnable: bool = True,
                 parameterization: str = "softplus") -> None:
        super().__init__(learnable)
        self.parameterization = _check_parameterization(parameterization, "Gamma")
        shape = _validated("shape", shape, "Gamma")
        rate = _validated("rate", rate, "Gamma")
        if parameterization == "softplus":
            self._register("raw_shape", _inverse_softplus(shape))
            self._register("raw_rate", _inverse_softplus(rate))
        elif parameterization == "log":
            self._register("log_shape", math.log(shape))
            self._register("log_rate", math.log(rate))
        else:
            self._register("log_mean", math.log(shape / rate))
            self._register("log_cv2", -math.log(shape))

    @property
    def shape(self) -> Tensor:
        if self.parameterization == "softplus":
            return F.softplus(self.raw_shape)
        if self.parameterization == "log":
            return torch.exp(self.log_shape)
        return torch.exp(-self.log_cv2)

    @property
    def rate(self) -> Tensor:
        if self.parameterization == "softplus":
            return F.softplus(self.raw_rate)
        if self.parameterization == "log":
            return torch.exp(self.log_rate)
        return torch.exp(-self.log_cv2 - self.log_mean)

    def _kernel_args(self) -> tuple[Tensor, Tensor, bool]:
        # softplus: the kernel applies it itself (one autograd node per call, not three)
        if self.parameterization == "softplus":
            return self.raw_shape, self.raw_rate, True
        return self.shape, self.rate, False

    def log_expected_sigmoid(self, margin: Tensor) -> Tensor:
        shape, rate, softplus = self._kernel_args()
        return log_gamma_expected_sigmoid(margin, shape, rate, softplus=softplus)

    def expected_sigmoid(self, margin: Tensor) -> Tensor:
        shape, rate, softplus = self._kernel_args()
        return gamma_expected_sigmoid(margin, shape, rate, softplus=softplus)

    def log_panel_likelihood(self, margin: Tensor, group: Tensor,
                             num_groups: int | None = None) -> Tensor:
        shape, rate, softplus = self._kernel_args()
        return log_gamma_panel_likelihood(margin, group, shape, rate, num_groups=num_groups,
                                          softplus=softplus)

    def mean(self) -> Tensor:
        return self.shape / self.rate

    def variance(self) -> Tensor:
        return self.shape / self.rate**2

    def posterior_mean(self, margin: Tensor) -> Tensor:
        """``E[β σ(βΔ)] = (k/λ)·E_{Gamma(k+1, λ)}[σ(βΔ)]`` (size-biased Gamma), so the posterior
        mean is ``(k/λ)·E_{k+1}[σ]/E_k[σ]``, evaluated in log space."""
        k, lam = self.shape, self.rate
        log_ratio = log_gamma_expected_sigmoid(margin, k + 1, lam) - log_gamma_expected_sigmoid(
            margin, k, lam
        )
        return (k / lam) * torch.exp(log_ratio)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws via numpy's Gamma sampler seeded from ``generator`` (torch's Gamma sampler takes
        no generator); not differentiable."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        k, lam = float(self.shape.detach()), float(self.rate.detach())
        draws = np.random.default_rng(seed).gamma(k, 1.0 / lam, size=int(n))
        return torch.from_numpy(draws).to(self.shape.device)

    def params(self) -> dict[str, float]:
        return {"shape": float(self.shape.detach()), "rate": float(self.rate.detach())}

    def extra_repr(self) -> str:
        return super().extra_repr() + _parameterization_repr(self.parameterization)


#: family name -> class (the ``strength`` field of configs).
STRENGTHS: dict[str, type[StrengthDistribution]] = {
    "point": PointMass,
    "lognormal": LogNormal,
    "gamma": Gamma,
}


def build_strength(family: str, learnable: bool = True, **params: object) -> StrengthDistribution:
    """Build a strength distribution by family name with paper defaults for omitted parameters.

    Example::

        build_strength("gamma", learnable=True, shape=2.0, rate=16.7)
        build_strength("lognormal", learnable=False, mu=-2.3, sigma=0.6, method="monte_carlo")
    """
    try:
        cls = STRENGTHS[family]
    except KeyError:
        raise ConfigError(
            f"unknown strength family {family!r}; valid: {', '.join(sorted(STRENGTHS))}"
        ) from None
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "learnable"}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {unknown} for strength {family!r}; valid: {sorted(accepted)}"
        )
    return cls(learnable=learnable, **params)
