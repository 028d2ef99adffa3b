"""Independent arbitrary-precision references (mpmath quadrature of the defining integrals).

Nothing here shares code or algorithms with :mod:`pluralign.numerics`: the Gamma and LogNormal
expectations are integrated directly against their densities (tanh-sinh quadrature with
breakpoints at the places where the integrand changes), never through the alternating series.
"""

from __future__ import annotations

import mpmath as mp


def _gamma_integral(margin: float, shape: float, rate: float, power: int, dps: int) -> mp.mpf:
    """``E[β^power · σ(−β|Δ|)]`` for β ~ Gamma(shape, rate), integrated over ``v = log β``."""
    x, k, lam = abs(mp.mpf(margin)), mp.mpf(shape), mp.mpf(rate)
    c = k * mp.log(lam) - mp.loggamma(k)

    def log_f(v):
        return c + (k + power) * v - lam * mp.exp(v) - mp.log1p(mp.exp(mp.exp(v) * x))

    width = 1 / mp.sqrt(k)
    peaks = [mp.log(k / lam), mp.log(k / (lam + x))]
    lo = min(peaks) - 80 / k - 5
    hi = min(mp.log((k + 300) / lam), mp.log((k + 300) / x)) + 1
    points = {-mp.log(x)} | {p + j * width for p in peaks for j in (-8, -4, -2, -1, 0, 1, 2, 4, 8)}
    points = [lo] + sorted(p for p in points if lo < p < hi) + [hi]
    # mp.quad's tolerance is absolute: scale the integrand to O(1) so tiny values stay exact.
    scale = max(log_f(p) for p in points)
    value = mp.quad(lambda v: mp.exp(log_f(v) - scale), points)
    return value * mp.exp(scale)


def gamma_expected_sigmoid(margin: float, shape: float, rate: float, dps: int = 20):
    """``(E, log E)`` with ``E = E_{β~Gamma(shape, rate)}[σ(β·margin)]`` (rate parametrisation)."""
    with mp.workdps(dps):
        if margin == 0:
            return mp.mpf(0.5), mp.log(mp.mpf(0.5))
        s = _gamma_integral(margin, shape, rate, 0, dps)
        if margin > 0:
            return 1 - s, mp.log1p(-s)
        return s, mp.log(s)


def gamma_posterior_mean(margin: float, shape: float, rate: float, dps: int = 20) -> mp.mpf:
    """``E[β σ(βΔ)] / E[σ(βΔ)]`` by direct quadrature of both moments."""
    with mp.workdps(dps):
        k, lam = mp.mpf(shape), mp.mpf(rate)
        if margin == 0:  # σ(0) = 1/2 carries no evidence: the prior mean k/λ
            return k / lam
        m0 = _gamma_integral(margin, shape, rate, 0, dps)
        m1 = _gamma_integral(margin, shape, rate, 1, dps)
        if margin > 0:  # E[β^p σ(βx)] = E[β^p] − E[β^p σ(−βx)]
            m0, m1 = 1 - m0, k / lam - m1
        return m1 / m0


def _lognormal_integral(margin: float, mu: float, sigma: float, power: int) -> mp.mpf:
    """``E[β^power σ(β·margin)]`` for β = exp(μ + σε), integrated over ε."""
    d, m, s = mp.mpf(margin), mp.mpf(mu), mp.mpf(sigma)
    a = m + mp.log(abs(d))

    def f(e):
        return mp.npdf(e) * mp.exp(power * (m + s * e)) / (1 + mp.exp(-d * mp.exp(m + s * e)))

    points = {mp.mpf(j) for j in range(-12, 13, 2)} | {(c - a) / s for c in (-2, 0, 1, 2, 3, 4)}
    points = [mp.mpf(-14)] + sorted(p for p in points if -14 < p < 14) + [mp.mpf(14)]
    return mp.quad(f, points)


def lognormal_expected_sigmoid(margin: float, mu: float, sigma: float, dps: int = 25) -> mp.mpf:
    """``E_{β=exp(μ+σε)}[σ(β·margin)]`` by quadrature over ε ~ N(0, 1)."""
    with mp.workdps(dps):
        return _lognormal_integral(margin, mu, sigma, 0)


def lognormal_posterior_mean(margin: float, mu: float, sigma: float, dps: int = 25) -> mp.mpf:
    """``E[β σ(βΔ)] / E[σ(βΔ)]`` for LogNormal β by direct quadrature."""
    with mp.workdps(dps):
        return _lognormal_integral(margin, mu, sigma, 1) / _lognormal_integral(
            margin, mu, sigma, 0
        )


def _log_sigmoid(z: mp.mpf) -> mp.mpf:
    return -mp.log1p(mp.exp(-z)) if z > 0 else z - mp.log1p(mp.exp(z))


def panel_log_likelihood(margins, family: str, params: dict, dps: int = 20) -> mp.mpf:
    """``log E_β Π_j σ(β Δ_j)`` for one annotator, by mpmath quadrature over ``v = log β``.

    The peak of the log-integrand is found by a dense numpy scan followed by mpmath's own root
    finder on its derivative; the quadrature interval extends to where the integrand is e^−60
    below the peak (found by stepping out), with breakpoints every half width. Repeated margins
    are summed with their multiplicity. Shares no code with :mod:`pluralign.panel`.
    """
    import numpy as np

    values, counts = np.unique(np.asarray(margins, dtype=float), return_counts=True)
    with mp.workdps(dps):
        d = [(mp.mpf(float(x)), int(c)) for x, c in zip(values, counts, strict=True)]
        if family == "gamma":
            k, lam = mp.mpf(params["shape"]), mp.mpf(params["rate"])
            c = k * mp.log(lam) - mp.loggamma(k)

            def log_prior(v):
                return c + k * v - lam * mp.exp(v)
            centre, spread = mp.log(k / lam), 1 / mp.sqrt(k)
        else:
            mu, s = mp.mpf(params["mu"]), mp.mpf(params["sigma"])

            def log_prior(v):
                return -((v - mu) / s) ** 2 / 2 - mp.log(s) - mp.log(2 * mp.pi) / 2
            centre, spread = mu, s

        def f(v):
            b = mp.exp(v)
            return log_prior(v) + mp.fsum(c * _log_sigmoid(b * x) for x, c in d)

        grid = float(centre) + float(spread) * np.arange(-400, 161) / 4
        z = np.exp(grid)[:, None] * values[None, :]
        scan = -np.logaddexp(0, -z) @ counts + np.array([float(log_prior(mp.mpf(v)))
                                                         for v in grid])
        peak = mp.mpf(grid[int(np.argmax(scan))])
        try:
            peak = mp.findroot(lambda v: mp.diff(f, v), peak, tol=mp.mpf(10) ** (-dps + 6))
        except (ValueError, ZeroDivisionError):
            pass
        top = f(peak)
        h = mp.mpf(10) ** -4 * (1 + abs(peak))
        curv = -(f(peak + h) - 2 * top + f(peak - h)) / h**2
        width = 1 / mp.sqrt(curv) if curv > 0 else spread
        points = [peak]
        for sign in (-1, 1):
            v = peak
            step = width / 2
            while f(v) > top - 60:
                v += sign * step
                points.append(v)
                if abs(v - peak) > 8 * width:
                    step *= 1.5
        points = sorted(points)
        value = mp.quad(lambda v: mp.exp(f(v) - top), points)
        return top + mp.log(value)
