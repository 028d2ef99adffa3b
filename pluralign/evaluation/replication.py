"""A claim replicated over seeds: a paired interval over per-seed differences and its verdict.

Each seed ``s`` gives one paired difference ``d_s`` (for the learned-strength claim, ``d_s = log
CV²_het,s − log CV²_hom,s``: both populations of a seed share its prompts, responses, compared
pairs and initialisation, so the pairing removes what the seed changes in both). With a handful of
seeds the interval is the Student-t interval of the mean difference,

    mean(d) ± t_{(1 + level)/2, n − 1} · sd(d) / √n,

exact when the per-seed differences are normal and independent (seeds are; the log makes a ratio
of variances closer to normal than the ratio itself). A bootstrap over 3–5 seeds has only a few
distinct resamples and under-covers, and a sign-flip test over n seeds cannot go below ``2^(1−n)``
(0.25 for 3 seeds), so neither is used for the verdict.

Verdict (never from one run): **supported** when the whole interval is above 0, **not supported**
when it is below 0 (the opposite holds), **unresolved** when it contains 0 — including when fewer
than 2 seeds or a zero spread make the interval undefined or degenerate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from pluralign.evaluation.errors import EvaluationError

SUPPORTED, NOT_SUPPORTED, UNRESOLVED = "supported", "not supported", "unresolved"


@dataclass(frozen=True)
class SeedInterval:
    """Mean paired difference over seeds, its t-interval, the two-sided p-value of mean 0 and the
    verdict (see the module docstring). ``ci_low``/``ci_high`` are NaN below 2 seeds."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    level: float
    p_value: float
    verdict: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def paired_seed_interval(differences: Sequence[float], level: float = 0.95) -> SeedInterval:
    """Student-t interval of the mean of per-seed paired ``differences`` and its verdict."""
    d = np.asarray(differences, dtype=float).ravel()
    if d.size == 0 or not np.all(np.isfinite(d)):
        raise EvaluationError(f"paired_seed_interval needs finite per-seed differences, got "
                              f"{list(differences)}")
    if not 0 < level < 1:
        raise EvaluationError(f"paired_seed_interval: level={level!r} must be in (0, 1)")
    n, mean = int(d.size), float(d.mean())
    if n < 2:
        return SeedInterval(n, mean, math.nan, math.nan, math.nan, level, math.nan, UNRESOLVED)
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    if sd > 0:
        p_value = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    else:
        p_value = 1.0 if mean == 0 else 0.0
    low, high = mean - half, mean + half
    verdict = SUPPORTED if low > 0 else NOT_SUPPORTED if high < 0 else UNRESOLVED
    if sd == 0:  # identical differences: no spread to build an interval from
        verdict = UNRESOLVED
    return SeedInterval(n, mean, sd, low, high, level, p_value, verdict)
