"""Panel kernels log E_β Π_j σ(βΔ_j) vs mpmath quadrature, the per-pair kernels and autograd."""

from __future__ import annotations

import math

import mp_reference as ref
import mpmath as mp
import numpy as np
import pytest
import torch

from pluralign.numerics import (
    NumericsError,
    log_gamma_expected_sigmoid,
    log_lognormal_expected_sigmoid,
)
from pluralign.panel import (
    log_gamma_panel_likelihood,
    log_lognormal_panel_likelihood,
    log_panel_likelihood,
    log_point_panel_likelihood,
)
from pluralign.strength import Gamma, LogNormal, PointMass

F64 = torch.float64


def _params(family: str, cv2: float, mean: float) -> dict[str, float]:
    """Distribution parameters with the given CV² and mean."""
    if family == "gamma":
        return {"shape": 1 / cv2, "rate": 1 / (cv2 * mean)}
    s2 = math.log1p(cv2)
    return {"mu": math.log(mean) - s2 / 2, "sigma": math.sqrt(s2)}


def _margins(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 1.0], n) * 10 ** rng.uniform(-4, 2, n)


@pytest.mark.parametrize("family", ["gamma", "lognormal"])
@pytest.mark.parametrize("cv2", [0.01, 1.0, 10.0])
@pytest.mark.parametrize("n", [1, 7, 40])
def test_panel_matches_mpmath_within_1e10(family, cv2, n):
    margins = _margins(n, seed=n + int(100 * cv2))
    mean = [0.05, 1.0, 20.0][n % 3]
    params = _params(family, cv2, mean)
    got = log_panel_likelihood(torch.tensor(margins), torch.zeros(n, dtype=torch.long), family,
                               **params)
    exact = ref.panel_log_likelihood(margins, family, params)
    assert abs(float(got[0]) - float(exact)) <= 1e-10 * max(1.0, abs(float(exact)))


@pytest.mark.parametrize("family", ["gamma", "lognormal"])
def test_500_identical_extreme_margins_do_not_underflow(family):
    # Π of 500 sigmoids at βΔ ≈ −100 is e^−50000: only a log-space evaluation is finite.
    margins = np.full(500, -100.0)
    params = _params(family, 0.5, 1.0)
    m = torch.tensor(margins, requires_grad=True)
    got = log_panel_likelihood(m, torch.zeros(500, dtype=torch.long), family, **params)
    got.sum().backward()
    exact = ref.panel_log_likelihood(margins, family, params)
    assert abs(float(got.detach()[0]) - float(exact)) <= 1e-10 * abs(float(exact))
    assert torch.isfinite(m.grad).all()


@pytest.mark.parametrize("sigma", [0.05, 0.01, 1e-4])
def test_lognormal_small_sigma_huge_negative_margin(sigma):
    # the case the per-pair fit's node rule got wrong (issue 22): σ small, μ = 1, Δ = −1e4
    margins = torch.tensor([-1e4, 3.0], dtype=F64)
    got = log_lognormal_panel_likelihood(margins, torch.tensor([0, 1]), 1.0, sigma)
    for value, margin in zip(got, (-1e4, 3.0), strict=True):
        exact = ref.panel_log_likelihood([margin], "lognormal", {"mu": 1.0, "sigma": sigma})
        assert abs(float(value) - float(exact)) <= 1e-10 * max(1.0, abs(float(exact)))


def test_one_pair_per_annotator_equals_the_per_pair_kernels():
    margins = torch.tensor(_margins(40, seed=3))
    group = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    g = log_gamma_panel_likelihood(margins, group, 2.0, 1.5)
    torch.testing.assert_close(g[group], log_gamma_expected_sigmoid(margins, 2.0, 1.5),
                               rtol=1e-11, atol=1e-13)
    ln = log_lognormal_panel_likelihood(margins, group, -0.3, 0.4)
    per_pair = log_lognormal_expected_sigmoid(margins, -0.3, 0.4, num_points=64)
    torch.testing.assert_close(ln[group], per_pair, rtol=1e-9, atol=1e-12)


def test_point_mass_is_the_per_pair_sum_by_annotator():
    margins = _margins(30, seed=5)
    group = np.arange(30) % 4
    got = log_point_panel_likelihood(torch.tensor(margins), torch.tensor(group), 0.7)
    expected = [-np.logaddexp(0, -0.7 * margins[group == a]).sum() for a in range(4)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-13)
    pm = PointMass(0.7).log_panel_likelihood(torch.tensor(margins), torch.tensor(group))
    torch.testing.assert_close(pm, got)


def _fd(f, x: float, h: float = 1e-6):
    with mp.workdps(30):
        return (f(mp.mpf(x) + h) - f(mp.mpf(x) - h)) / (2 * h)


@pytest.mark.parametrize("family", ["gamma", "lognormal"])
def test_gradients_match_mpmath_differences(family):
    margins = np.array([-2.0, 0.5, 1.5, -0.01, 4.0])
    params = _params(family, 0.8, 0.7)
    names = list(params)
    m = torch.tensor(margins, requires_grad=True)
    p = {k: torch.tensor(v, dtype=F64, requires_grad=True) for k, v in params.items()}
    out = log_panel_likelihood(m, torch.zeros(5, dtype=torch.long), family, **p)
    out.sum().backward()

    def ref_at(**change):
        return lambda x: ref.panel_log_likelihood(
            [float(x) if i == change.get("i") else v for i, v in enumerate(margins)],
            family, {k: (float(x) if k == change.get("k") else v) for k, v in params.items()},
            dps=30)

    for name in names:
        exact = float(_fd(ref_at(k=name), params[name]))
        assert float(p[name].grad) == pytest.approx(exact, rel=1e-7, abs=1e-9)
    for i in (0, 3):
        exact = float(_fd(ref_at(i=i), margins[i]))
        assert float(m.grad[i]) == pytest.approx(exact, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("family,raw", [("gamma", {"shape": 0.3, "rate": -1.0}),
                                        ("lognormal", {"mu": 0.2, "sigma": -0.5})])
def test_softplus_coordinates_equal_the_transformed_parameters(family, raw):
    margins = torch.tensor(_margins(12, seed=9))
    group = torch.arange(12) % 3
    raw_t = {k: torch.tensor(v, dtype=F64, requires_grad=True) for k, v in raw.items()}
    a = log_panel_likelihood(margins, group, family, softplus=True, **raw_t)
    transformed = {k: (v if k == "mu" else torch.nn.functional.softplus(v))
                   for k, v in raw_t.items()}
    b = log_panel_likelihood(margins, group, family, **transformed)
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    ga = torch.autograd.grad(a.sum(), list(raw_t.values()))
    gb = torch.autograd.grad(b.sum(), list(raw_t.values()))
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("module", [Gamma(2.0, 3.0, parameterization="mean_cv2"),
                                    LogNormal(-0.5, 0.8, parameterization="log"),
                                    Gamma(2.0, 3.0)])
def test_strength_modules_expose_the_panel_likelihood_with_gradients(module):
    margins = torch.tensor(_margins(20, seed=2), dtype=torch.float32)
    group = torch.arange(20) // 5
    out = module.log_panel_likelihood(margins, group, num_groups=5)
    assert out.shape == (5,) and out.dtype == torch.float32 and out[4] == 0  # empty annotator
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad) for p in module.parameters())


@pytest.mark.parametrize("margin,group,kwargs,message", [
    ([1.0, float("nan")], [0, 0], {}, "margin must be finite"),
    ([1.0, 2.0], [0], {}, "same length"),
    ([1.0, 2.0], [0.0, 1.0], {}, "integer"),
    ([1.0, 2.0], [0, 1], {"shape": -1.0}, "shape must be finite and > 0"),
    ([1.0, 2.0], [0, 3], {"num_groups": 2}, "num_groups"),
])
def test_bad_input_raises_one_clear_error(margin, group, kwargs, message):
    args = {"shape": 2.0, "rate": 1.0, **kwargs}
    with pytest.raises(NumericsError, match=message):
        log_panel_likelihood(torch.tensor(margin, dtype=F64), torch.tensor(group), "gamma",
                             **args)
