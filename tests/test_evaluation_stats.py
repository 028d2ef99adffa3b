"""Subgroup tables and win-rate statistics against independent references."""

import itertools
import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.subgroups import margin_gains, subgroup_table
from pluralign.evaluation.winrate import (
    compare_win_rates,
    fit_length_logistic,
    length_controlled_win_rate,
    length_feature,
    sign_flip_test,
    win_rate_stats,
)


def _frame(seed=0, n=300):
    rng = np.random.default_rng(seed)
    edu = rng.choice(["college", "school", "phd"], size=n, p=[0.7, 0.25, 0.05])
    return pd.DataFrame({
        "margin": rng.normal(size=n) + (edu == "phd") * -1.0,
        "attr.education": edu,
        "ctx.conversation_type": rng.choice(["unguided", "values guided"], size=n),
        "annotator_id": rng.integers(0, 30, size=n).astype(str),
    })


def test_micro_and_macro_match_groupby():
    df = _frame()
    t = subgroup_table(df, ["attr.education", "ctx.conversation_type"], n_boot=200, min_count=30)
    assert t.micro.mean == pytest.approx(df.margin.mean(), abs=1e-12)
    g1 = df.groupby("attr.education").margin.mean()
    g2 = df.groupby("ctx.conversation_type").margin.mean()
    assert t.macro_by_attribute["attr.education"].mean == pytest.approx(g1.mean(), abs=1e-12)
    assert t.macro.mean == pytest.approx(pd.concat([g1, g2]).mean(), abs=1e-12)
    row = t.groups.set_index("group").loc["phd"]
    assert row["count"] == (df["attr.education"] == "phd").sum()
    assert row["mean"] == pytest.approx(g1["phd"], abs=1e-12)
    assert bool(row["small"]) and row["count"] < 30
    for est in (t.micro, t.macro):
        assert est.ci_low <= est.mean <= est.ci_high


def test_bootstrap_interval_matches_exact_enumeration():
    """All 5^5 equally likely resamples give the exact bootstrap distribution of the mean."""
    x = np.array([0.3, -1.2, 2.0, 0.7, -0.1])
    exact = np.array([x[list(idx)].mean() for idx in itertools.product(range(5), repeat=5)])
    lo_ref, hi_ref = np.quantile(exact, [0.05, 0.95])
    df = pd.DataFrame({"margin": x, "g": ["a"] * 5})
    t = subgroup_table(df, "g", n_boot=40_000, level=0.9, seed=3)
    assert t.micro.ci_low == pytest.approx(lo_ref, abs=0.04)
    assert t.micro.ci_high == pytest.approx(hi_ref, abs=0.04)
    grp = t.groups.iloc[0]
    assert grp["ci_low"] == pytest.approx(lo_ref, abs=0.04)


def test_cluster_bootstrap_is_wider_for_correlated_clusters():
    rng = np.random.default_rng(1)
    cluster_effect = rng.normal(size=20)
    cid = np.repeat(np.arange(20), 15)
    df = pd.DataFrame({"margin": cluster_effect[cid] + 0.1 * rng.normal(size=cid.size),
                       "g": "all", "annotator_id": cid.astype(str)})
    plain = subgroup_table(df, "g", n_boot=500)
    clustered = subgroup_table(df, "g", n_boot=500, cluster="annotator_id")
    width = lambda e: e.ci_high - e.ci_low  # noqa: E731
    assert width(clustered.micro) > 2 * width(plain.micro)


def test_empty_subgroup_is_flagged_and_left_out_of_macro():
    df = _frame()
    t = subgroup_table(df, "attr.education", n_boot=100,
                       levels={"attr.education": ["college", "school", "phd", "none"]})
    row = t.groups.set_index("group").loc["none"]
    assert row["count"] == 0 and bool(row["empty"]) and math.isnan(row["mean"])
    assert t.macro.n == 3
    assert t.macro.mean == pytest.approx(df.groupby("attr.education").margin.mean().mean())
    assert any("none" in note and "empty" in note for note in t.notes)
    out = t.to_dict()
    assert [g for g in out["groups"] if g["group"] == "none"][0]["mean"] is None


def test_nan_margins_are_excluded_and_listed():
    df = _frame()
    df.loc[[4, 17], "margin"] = [np.nan, np.inf]
    t = subgroup_table(df, "attr.education", n_boot=100)
    assert t.excluded_rows == [4, 17]
    assert t.micro.n == len(df) - 2
    assert t.micro.mean == pytest.approx(df.margin.drop([4, 17]).mean())
    with pytest.raises(EvaluationError, match=r"2 of 300 rows.*\[4, 17\]"):
        subgroup_table(df, "attr.education", on_nan="raise")
    df["margin"] = np.nan
    with pytest.raises(EvaluationError, match="no rows with a finite"):
        subgroup_table(df, "attr.education")


def test_missing_attribute_column_names_the_fix():
    with pytest.raises(EvaluationError, match="attr.<name>"):
        subgroup_table(_frame(), "education")


@pytest.mark.parametrize("column", [
    ["a", "b", None, "a"],
    ["a", "b", np.nan, "a"],
    pd.array(["a", "b", pd.NA, "a"], dtype="string"),
    pd.Categorical(["a", "b", None, "a"]),
    pd.array([1, 2, None, 1], dtype="Int64"),
], ids=["object-None", "object-nan", "string-NA", "categorical", "Int64-NA"])
def test_rows_without_an_attribute_value_are_in_no_subgroup(column):
    """Issue 15 #3: a missing value used to raise 'boolean value of NA is ambiguous'. Such rows
    count in the micro average, in no subgroup, and a note says how many."""
    df = pd.DataFrame({"margin": [1.0, 2.0, 3.0, 4.0], "attr.g": column})
    table = subgroup_table(df, "attr.g", n_boot=20)
    counts = dict(zip(table.groups["group"], table.groups["count"], strict=True))
    means = dict(zip(table.groups["group"], table.groups["mean"], strict=True))
    first, second = sorted(counts)
    assert counts == {first: 2, second: 1}
    assert means == {first: 2.5, second: 2.0}  # rows 0 and 3; row 1
    assert table.micro.mean == 2.5 and table.micro.n == 4
    assert any("1 comparisons have no value" in note for note in table.notes)


def test_margin_gains_are_paired_differences():
    base = _frame(seed=2)
    run = base.copy()
    run["margin"] = base.margin + np.where(base["attr.education"] == "phd", 1.0, 0.2)
    t = margin_gains(run, base, "attr.education", n_boot=300)
    gains = t.groups.set_index("group")["mean"]
    assert gains["phd"] == pytest.approx(1.0) and gains["school"] == pytest.approx(0.2)
    # constant per-group shift: paired intervals collapse onto the gain
    assert t.micro.ci_high - t.micro.ci_low < 0.2
    assert t.macro.mean == pytest.approx((1.0 + 0.2 + 0.2) / 3)
    keyed = margin_gains(run.assign(pair=range(len(run))).sample(frac=1, random_state=0),
                         base.assign(pair=range(len(base))), "attr.education", key="pair",
                         n_boot=50)
    assert keyed.macro.mean == pytest.approx(t.macro.mean)
    with pytest.raises(EvaluationError, match="same comparisons"):
        margin_gains(run.iloc[:10], base, "attr.education")


# ---------------------------------------------------------------- win rates


def _reference_logistic(o, x, l2):
    def negll(t):
        eta = t[0] + t[1] * x
        return -np.sum(o * -np.logaddexp(0, -eta) + (1 - o) * -np.logaddexp(0, eta)) \
            + 0.5 * l2 * (t @ t)
    return optimize.minimize(negll, np.zeros(2), method="Nelder-Mead",
                             options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000}).x


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(-2, 2), st.floats(0, 3))
def test_lc_fit_matches_scipy_optimizer(seed, a_true, b_true):
    rng = np.random.default_rng(seed)
    dl = rng.normal(0, 50, size=80)
    x = length_feature(dl)
    p = 1 / (1 + np.exp(-(a_true + b_true * x)))
    o = (rng.random(80) < p).astype(float)
    o[:5] = 0.5  # ties
    a, b = fit_length_logistic(o, x, l2=1e-3)
    ref = _reference_logistic(o, x, 1e-3)
    assert a == pytest.approx(ref[0], abs=1e-4)
    assert b == pytest.approx(ref[1], abs=1e-4)


def test_lc_win_rate_removes_a_length_bias():
    """The judge prefers longer answers; the policy is only better because it is longer."""
    rng = np.random.default_rng(0)
    dl = rng.normal(30, 40, size=3000)
    x = length_feature(dl)
    o = (rng.random(dl.size) < 1 / (1 + np.exp(-(0.0 + 2.0 * x)))).astype(float)
    assert o.mean() > 0.6
    assert length_controlled_win_rate(o, dl) == pytest.approx(50, abs=3)


def test_lc_fit_is_finite_under_separation():
    o = np.ones(30)
    assert 95 < length_controlled_win_rate(o, np.arange(30.0)) <= 100


@pytest.mark.parametrize("n", [7, 12, 40])
def test_sign_flip_on_binary_outcomes_equals_binomial_test(n):
    rng = np.random.default_rng(n)
    o = rng.choice([0.0, 0.5, 1.0], size=n, p=[0.25, 0.1, 0.65])
    decided = o[o != 0.5]
    ref = stats.binomtest(int(decided.sum()), decided.size, 0.5).pvalue
    p = sign_flip_test(o - 0.5, n_permutations=200_000, seed=1)
    assert p == pytest.approx(ref, abs=1e-9 if n <= 16 else 0.01)


def test_sign_flip_matches_scipy_permutation_test_on_continuous_data():
    rng = np.random.default_rng(4)
    d = rng.normal(0.4, 1.0, size=11)
    ref = stats.permutation_test((d,), np.mean, permutation_type="samples",
                                 alternative="two-sided", n_resamples=np.inf).pvalue
    assert sign_flip_test(d) == pytest.approx(ref, abs=1e-9)


def test_win_rate_stats_and_paired_comparison():
    rng = np.random.default_rng(5)
    a = (rng.random(200) < 0.7).astype(float)
    b = (rng.random(200) < 0.5).astype(float)
    res = win_rate_stats(a, rng.normal(size=200), n_boot=300, n_permutations=2000)
    assert res.win_rate == pytest.approx(100 * a.mean())
    assert res.ci_low < res.win_rate < res.ci_high
    assert res.p_value < 0.01 and res.lc_win_rate is not None
    diff = compare_win_rates(a, b, n_boot=300, n_permutations=2000)
    assert diff.difference == pytest.approx(100 * (a.mean() - b.mean()))
    assert diff.ci_low < diff.difference < diff.ci_high
    with pytest.raises(EvaluationError, match="non-finite"):
        win_rate_stats([1.0, np.nan])
    with pytest.raises(EvaluationError, match="no judged prompts"):
        win_rate_stats([])


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"level": 1.5}, "level=1.5"), ({"level": float("nan")}, "level=nan"),
    ({"level": "x"}, "level='x'"), ({"n_boot": 0}, "n_boot=0"), ({"n_boot": 2.5}, "n_boot=2.5"),
])
def test_bad_bootstrap_settings_name_the_field(kwargs, field):
    """Issue 15 #9: these used to raise numpy's 'Quantiles must be in the range [0, 1]', 'need at
    least one array to concatenate' or a TypeError."""
    df = pd.DataFrame({"margin": [1.0, 2.0, 3.0, 4.0], "attr.g": list("abab")})
    with pytest.raises(EvaluationError, match=re.escape(field)):
        subgroup_table(df, "attr.g", **kwargs)
    with pytest.raises(EvaluationError, match=re.escape(field)):
        win_rate_stats([1.0, 0.0, 1.0], **kwargs)
