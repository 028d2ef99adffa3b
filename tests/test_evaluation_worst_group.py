"""Worst-group accuracy/margin and the paired gain, against direct computation and brute force."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.worst_group import worst_group_gain, worst_group_summary


def _frame(margins, groups):
    return pd.DataFrame({"margin": margins, "group": groups})


def test_worst_group_is_the_lowest_group_accuracy_next_to_micro_and_macro():
    df = _frame([1, 2, -1, 3, -1, -2, 0.5, 1], ["a", "a", "a", "a", "b", "b", "b", "b"])
    s = worst_group_summary(df, "group", n_boot=200)
    assert s.worst_group == "b"
    assert s.worst_group_accuracy.mean == pytest.approx(0.5)        # b: 2 of 4 right
    assert s.accuracy.micro.mean == pytest.approx(5 / 8)
    assert s.accuracy.macro.mean == pytest.approx((0.75 + 0.5) / 2)
    assert s.worst_group_margin.mean == pytest.approx(min(np.mean([1, 2, -1, 3]),
                                                          np.mean([-1, -2, 0.5, 1])))
    assert s.worst_group_accuracy.ci_low <= 0.5 <= s.worst_group_accuracy.ci_high
    assert set(s.to_dict()) >= {"worst_group_accuracy", "accuracy", "margin"}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.integers(0, 2)), min_size=2, max_size=15))
def test_gain_point_estimate_matches_brute_force(rows):
    rng = np.random.default_rng(len(rows))
    margins = [m for m, _ in rows]
    other = list(rng.normal(size=len(rows)))
    groups = [str(g) for _, g in rows]

    def worst(ms):
        accs = {}
        for m, g in zip(ms, groups, strict=True):
            accs.setdefault(g, []).append(1.0 if m > 0 else 0.0)
        return min(sum(v) / len(v) for v in accs.values())

    gain = worst_group_gain(_frame(margins, groups), _frame(other, groups), "group", n_boot=50)
    assert gain["estimate"] == pytest.approx(worst(margins) - worst(other))
    assert gain["ci"][0] <= gain["ci"][1]


def test_a_clear_worst_group_improvement_has_an_interval_above_zero():
    rng = np.random.default_rng(0)
    groups = ["maj"] * 400 + ["min"] * 100
    base = np.r_[rng.normal(1, 1, 400), rng.normal(-1, 1, 100)]
    run = np.r_[rng.normal(0.8, 1, 400), rng.normal(0.5, 1, 100)]
    gain = worst_group_gain(_frame(run, groups), _frame(base, groups), "group", n_boot=500)
    assert gain["ci"][0] > 0
    same = worst_group_gain(_frame(base, groups), _frame(base, groups), "group", n_boot=100)
    assert same["estimate"] == 0 and same["ci"] == [0, 0]


def test_mismatched_runs_fail_clearly():
    with pytest.raises(EvaluationError, match="same held-out pairs"):
        worst_group_gain(_frame([1, 2], ["a", "b"]), _frame([1], ["a"]), "group")
    with pytest.raises(EvaluationError, match="disagree"):
        worst_group_gain(_frame([1, 2], ["a", "b"]), _frame([1, 2], ["b", "a"]), "group")
    with pytest.raises(EvaluationError, match="no 'group'"):
        worst_group_summary(_frame([1, 2], ["a", None]), "group")


def test_cluster_bootstrap_draws_whole_clusters_with_the_cluster_mean_variance():
    """Reference: with k equal-size clusters the cluster bootstrap of the mean has variance
    var(cluster means, ddof=0) / k (Davison & Hinkley 1997, §3.8)."""
    from pluralign.evaluation.bootstrap import bootstrap_statistic

    rng = np.random.default_rng(3)
    k, m = 12, 5
    clusters = np.repeat(np.arange(k), m)[rng.permutation(k * m)]
    values = rng.normal(size=k)[clusters] + 0.1 * rng.normal(size=k * m)
    seen = []

    def mean(idx):
        seen.append(idx)
        return float(values[idx].mean())

    boot = bootstrap_statistic(k * m, mean, 4000, np.random.default_rng(0), clusters)
    means = np.array([values[clusters == c].mean() for c in range(k)])
    assert boot.var() == pytest.approx(means.var() / k, rel=0.1)
    for idx in seen[:50]:  # every drawn cluster comes with all of its rows
        drawn = clusters[idx]
        assert all(np.count_nonzero(drawn == c) % m == 0 for c in np.unique(drawn))
        assert idx.size == k * m


def test_clustered_gain_with_one_pair_per_annotator_is_the_pair_bootstrap():
    rng = np.random.default_rng(1)
    groups = np.array(["a"] * 30 + ["b"] * 10)
    run = _frame(rng.normal(0.3, 1, 40), groups)
    base = _frame(rng.normal(0.0, 1, 40), groups)
    run["annotator_id"] = [f"a{i:02d}" for i in range(40)]  # sorted: cluster j is row j
    plain_gain = worst_group_gain(run, base, "group", n_boot=200, seed=4)
    clustered = worst_group_gain(run, base, "group", n_boot=200, seed=4, cluster="annotator_id")
    assert clustered["ci"] == plain_gain["ci"] and clustered["cluster"] == "annotator_id"


def test_clustered_intervals_widen_when_an_annotators_pairs_agree():
    # 20 annotators x 10 pairs; each annotator's pairs are all right or all wrong
    right = np.repeat(np.arange(20) % 3 != 0, 10)
    df = _frame(np.where(right, 1.0, -1.0), np.repeat(np.arange(20) % 2, 10).astype(str))
    df["annotator_id"] = np.repeat(np.arange(20), 10)
    pairs = worst_group_summary(df, "group", n_boot=500).worst_group_accuracy
    clustered = worst_group_summary(df, "group", n_boot=500,
                                    cluster="annotator_id").worst_group_accuracy
    assert clustered.mean == pairs.mean
    assert clustered.ci_high - clustered.ci_low > 2 * (pairs.ci_high - pairs.ci_low)
    with pytest.raises(EvaluationError, match="cluster column 'nope' not found"):
        worst_group_summary(df, "group", n_boot=10, cluster="nope")
