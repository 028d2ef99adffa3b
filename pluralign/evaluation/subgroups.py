"""Subgroup tables: per-subgroup mean margins, micro/macro averages, bootstrap CIs ([MixDPO, §5.1]).

For a value ``v_i`` per comparison (a preference margin, or a margin *gain* over a baseline) and a
partition of the comparisons into subgroups ``g`` by an annotator or context attribute:

* subgroup mean  ``m_g = (1/n_g) Σ_{i∈g} v_i``;
* micro average  ``(1/N) Σ_i v_i`` — weights every comparison equally (Fig. 2, blue line);
* macro average  ``(1/G) Σ_g m_g`` — weights every subgroup equally (Fig. 2, orange line), over the
  non-empty subgroups of all requested attributes.

Intervals come from one bootstrap over comparisons (or over clusters such as annotators, since
comparisons by one annotator are correlated): every statistic is recomputed on the same resamples,
so the intervals are jointly coherent, and for :func:`margin_gains` they are paired intervals.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pluralign.evaluation.bootstrap import check_level, check_n_boot, percentile_interval
from pluralign.evaluation.errors import EvaluationError, require_column

#: Upper bound on resample-weight entries held in memory at once (about 16 MB).
_BLOCK_ENTRIES = 2_000_000

#: Subgroups with fewer comparisons than this are flagged ``small`` (their means are noisy).
DEFAULT_MIN_COUNT = 20


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile bootstrap interval and the number of units behind it."""

    mean: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n}


@dataclass
class SubgroupTable:
    """Result of :func:`subgroup_table`.

    Attributes:
        groups: one row per (attribute, group) with ``count``, ``mean``, ``ci_low``, ``ci_high``,
            ``small`` (count below ``min_count``) and ``empty`` (no comparisons; mean is NaN and the
            group is left out of the macro average).
        micro: mean over all comparisons.
        macro: unweighted mean of the non-empty subgroup means (all attributes together).
        macro_by_attribute: the macro average within each attribute.
        value: the column that was averaged.
        level: confidence level of the intervals.
        excluded_rows: index labels of rows left out because their value was NaN or infinite.
        notes: human-readable remarks (empty groups, missing attribute values, excluded rows).
    """

    groups: pd.DataFrame
    micro: Estimate
    macro: Estimate
    macro_by_attribute: dict[str, Estimate]
    value: str
    level: float
    excluded_rows: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (NaN means of empty groups become ``None``)."""
        rows = []
        for rec in self.groups.to_dict(orient="records"):
            rows.append({k: (None if isinstance(v, float) and math.isnan(v) else _plain(v))
                         for k, v in rec.items()})
        return {
            "value": self.value,
            "level": self.level,
            "micro": self.micro.to_dict(),
            "macro": self.macro.to_dict(),
            "macro_by_attribute": {k: v.to_dict() for k, v in self.macro_by_attribute.items()},
            "groups": rows,
            "excluded_rows": [_plain(r) for r in self.excluded_rows],
            "notes": list(self.notes),
        }


def _plain(v: Any) -> Any:
    """numpy scalars -> Python scalars, for JSON."""
    return v.item() if isinstance(v, np.generic) else v


def _is_missing(series: pd.Series) -> np.ndarray:
    text = series.astype("string")
    return (series.isna() | text.str.strip().eq("")).to_numpy(dtype=bool)


def _valid_rows(df: pd.DataFrame, value: str, on_nan: str) -> tuple[pd.DataFrame, list[Any]]:
    if on_nan not in ("drop", "raise"):
        raise EvaluationError(f"on_nan must be 'drop' or 'raise', got {on_nan!r}")
    if value not in df.columns:
        raise EvaluationError(
            f"column {value!r} not found; available columns: {sorted(map(str, df.columns))}")
    vals = pd.to_numeric(df[value], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(vals)
    excluded = list(df.index[bad])
    if bad.any() and on_nan == "raise":
        raise EvaluationError(
            f"{int(bad.sum())} of {len(df)} rows have a NaN or infinite {value!r} "
            f"(first rows: {excluded[:5]}); fix the margins or pass on_nan='drop' to exclude and "
            "list them")
    kept = df.loc[~bad]
    if kept.empty:
        raise EvaluationError(
            f"no rows with a finite {value!r} to average ({len(df)} rows given, {len(excluded)} "
            "NaN/infinite); check the model outputs or the evaluation split")
    return kept, excluded


def _group_columns(df: pd.DataFrame, by: Sequence[str],
                   levels: Mapping[str, Sequence[str]] | None, notes: list[str]):
    """One-hot membership matrix (n, G) and the (attribute, group) label of each column."""
    labels: list[tuple[str, str]] = []
    blocks: list[np.ndarray] = []
    for attr in by:
        if attr not in df.columns:
            raise EvaluationError(
                f"subgroup attribute {attr!r} is not a column; available: "
                f"{sorted(map(str, df.columns))} (annotator attributes appear as 'attr.<name>', "
                "context as 'ctx.<name>')")
        col = df[attr]
        missing = _is_missing(col)
        if missing.any():
            notes.append(f"{attr}: {int(missing.sum())} comparisons have no value; they count "
                         "in the micro average but in no subgroup")
        observed = sorted({str(v) for v in col[~missing]})
        wanted = list(observed)
        if isinstance(col.dtype, pd.CategoricalDtype):
            wanted += [str(c) for c in col.cat.categories if str(c) not in wanted]
        if levels and attr in levels:
            wanted += [str(c) for c in levels[attr] if str(c) not in wanted]
        # missing entries (None, NaN, pd.NA) become "" so that == never meets pd.NA
        text = col.astype("string").fillna("").to_numpy(dtype=object)
        for g in wanted:
            member = (text == g) & ~missing
            labels.append((attr, g))
            blocks.append(member.astype(float))
    if not labels:
        raise EvaluationError("no subgroups: pass at least one attribute column in `by`")
    return np.stack(blocks, axis=1), labels


def subgroup_table(
    df: pd.DataFrame,
    by: str | Sequence[str],
    value: str = "margin",
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    min_count: int = DEFAULT_MIN_COUNT,
    cluster: str | None = None,
    levels: Mapping[str, Sequence[str]] | None = None,
    on_nan: str = "drop",
    seed: int = 0,
) -> SubgroupTable:
    """Per-subgroup mean of ``value`` with micro and macro averages and bootstrap intervals.

    Args:
        df: one row per comparison (e.g. the output of :func:`preference_margins`).
        by: attribute column(s); each defines its own partition (rows of all of them appear in the
            table; the macro average is over every non-empty subgroup). A row without a value
            (None, NaN, NA, blank) for an attribute is in none of its subgroups but still counts
            in the micro average; ``notes`` says how many such rows each attribute has.
        value: the column to average.
        n_boot: bootstrap resamples.
        level: confidence level of the percentile intervals.
        min_count: subgroups with fewer comparisons are flagged ``small``.
        cluster: resample clusters (e.g. ``"annotator_id"``) instead of comparisons.
        levels: expected groups per attribute; listed groups with no comparisons appear as ``empty``
            (so are unobserved categories of a categorical column).
        on_nan: ``"drop"`` excludes rows whose value is NaN/inf and lists them in ``excluded_rows``;
            ``"raise"`` raises :class:`EvaluationError` instead.
        seed: seed of the bootstrap.
    """
    by = [by] if isinstance(by, str) else list(by)
    n_boot, level = check_n_boot(n_boot), check_level(level)
    notes: list[str] = []
    data, excluded = _valid_rows(df, value, on_nan)
    if excluded:
        notes.append(f"{len(excluded)} comparisons excluded because {value!r} is NaN or infinite "
                     f"(rows {excluded[:10]}{' ...' if len(excluded) > 10 else ''})")
    x = data[value].to_numpy(dtype=float)
    member, labels = _group_columns(data, by, levels, notes)
    counts = member.sum(axis=0)
    nonempty = counts > 0
    for (attr, g), c in zip(labels, counts, strict=True):
        if c == 0:
            notes.append(f"{attr}={g}: empty subgroup (no comparisons); "
                         "left out of the macro average")
    if not nonempty.any():
        raise EvaluationError(f"every subgroup of {by} is empty; check the attribute columns")

    def stats(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(micro, group means, group counts) for row weights ``w`` of shape (B, n)."""
        gcount = w @ member
        with np.errstate(invalid="ignore", divide="ignore"):
            gmean = (w * x) @ member / gcount
            micro = (w @ x) / w.sum(axis=1)
        return micro, gmean, gcount

    micro0, gmean0, _ = stats(np.ones((1, x.size)))
    rng = np.random.default_rng(seed)
    blocks = [stats(w) for w in _bootstrap_weights(data, cluster, n_boot, rng)]
    micro_b = np.concatenate([b[0] for b in blocks])
    gmean_b = np.concatenate([b[1] for b in blocks])

    attrs = [a for a, _ in labels]
    rows = []
    for j, (attr, g) in enumerate(labels):
        samples = gmean_b[:, j][np.isfinite(gmean_b[:, j])]
        lo, hi = percentile_interval(samples, level) if samples.size else (math.nan, math.nan)
        rows.append({"attribute": attr, "group": g, "count": int(counts[j]),
                     "mean": float(gmean0[0, j]) if counts[j] else math.nan,
                     "ci_low": lo if counts[j] else math.nan,
                     "ci_high": hi if counts[j] else math.nan,
                     "small": bool(0 < counts[j] < min_count), "empty": bool(counts[j] == 0)})

    def macro(mask: np.ndarray) -> Estimate:
        cols = mask & nonempty
        point = float(gmean0[0, cols].mean())
        # a subgroup absent from a resample is skipped in that resample's macro average
        with np.errstate(invalid="ignore"):
            samples = np.nanmean(gmean_b[:, cols], axis=1)
        return Estimate(point, *percentile_interval(samples[np.isfinite(samples)], level),
                        n=int(cols.sum()))

    attr_arr = np.array(attrs)
    return SubgroupTable(
        groups=pd.DataFrame(rows),
        micro=Estimate(float(micro0[0]), *percentile_interval(micro_b, level), n=int(x.size)),
        macro=macro(np.ones(len(labels), dtype=bool)),
        macro_by_attribute={a: macro(attr_arr == a) for a in by if (attr_arr == a).any()
                            and nonempty[attr_arr == a].any()},
        value=value, level=level, excluded_rows=excluded, notes=notes,
    )


def _bootstrap_weights(data: pd.DataFrame, cluster: str | None, n_boot: int,
                       rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield blocks of resample multiplicities per row, shape (block, n), ``n_boot`` rows in all.

    Each resample draws rows (or whole clusters) with replacement: multiplicities are multinomial.
    """
    n = len(data)
    if cluster is None:
        codes, k = np.arange(n), n
    else:
        require_column(data.columns, cluster, "cluster column")
        codes, uniques = pd.factorize(data[cluster].astype("string").fillna("<missing>"))
        k = len(uniques)
    block = max(1, _BLOCK_ENTRIES // max(n, 1))
    for start in range(0, n_boot, block):
        size = min(block, n_boot - start)
        yield rng.multinomial(k, np.full(k, 1.0 / k), size=size).astype(float)[:, codes]


def margin_gains(
    run: pd.DataFrame,
    baseline: pd.DataFrame,
    by: str | Sequence[str],
    value: str = "margin",
    *,
    key: str | Sequence[str] | None = None,
    **kwargs: Any,
) -> SubgroupTable:
    """Per-subgroup gain of ``run`` over ``baseline`` on the same comparisons ([MixDPO, Fig. 3/6]).

    The gain of comparison ``i`` is ``v_i(run) − v_i(baseline)``; the table of gains has the
    subgroup, micro and macro *differences* with paired-bootstrap intervals (both models are
    resampled on the same comparisons). Rows are matched on ``key`` columns if given, else by
    position (the two frames must then describe the same comparisons in the same order).
    """
    by_list = [by] if isinstance(by, str) else list(by)
    for name, frame in (("run", run), ("baseline", baseline)):
        if value not in frame.columns:
            raise EvaluationError(f"{name} has no {value!r} column")
    if key is None:
        if len(run) != len(baseline):
            raise EvaluationError(
                f"run has {len(run)} rows but baseline has {len(baseline)}; evaluate both on "
                "the same comparisons or pass key=<id columns> to match them")
        merged = run.reset_index(drop=True).copy()
        merged[value] = (pd.to_numeric(run[value], errors="coerce").to_numpy(dtype=float)
                         - pd.to_numeric(baseline[value], errors="coerce").to_numpy(dtype=float))
    else:
        keys = [key] if isinstance(key, str) else list(key)
        right = baseline[keys + [value]].rename(columns={value: "_baseline_value"})
        if right.duplicated(keys).any():
            raise EvaluationError(f"baseline key {keys} is not unique; pick columns that "
                                  "identify a comparison")
        merged = run.merge(right, on=keys, how="inner", validate="one_to_one")
        if merged.empty:
            raise EvaluationError(f"no comparisons shared by run and baseline on key {keys}")
        merged[value] = (pd.to_numeric(merged[value], errors="coerce")
                         - pd.to_numeric(merged.pop("_baseline_value"), errors="coerce"))
    return subgroup_table(merged, by_list, value=value, **kwargs)
