"""Synthetic populations: determinism, Bradley–Terry calibration, controls, save/load."""

import hashlib
import json
from importlib import resources

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats
from scipy.special import expit

from pluralign.data import SchemaError, to_pandas, validate
from pluralign.data.synthetic import (
    PopulationConfig,
    exact_counts,
    load_population,
    make_population,
)
from pluralign.errors import ConfigError


def test_same_seed_gives_identical_data_and_other_seed_differs():
    cfg = PopulationConfig(n_annotators=40, pairs_per_annotator=10, seed=3)
    a, b = make_population(cfg), make_population(cfg)
    assert a.dataset.data.table.equals(b.dataset.data.table)
    np.testing.assert_array_equal(a.truth.annotator_beta, b.truth.annotator_beta)
    c = make_population(cfg, seed=4)
    assert not a.dataset.data.table.equals(c.dataset.data.table)


def test_dataset_is_schema_valid_with_ground_truth_columns():
    pop = make_population(n_annotators=30, pairs_per_annotator=5)
    ds = validate(pop.dataset, source="test")
    assert len(ds) == 150
    assert {"type_id", "true_beta", "true_margin", "chosen_id", "rejected_id"} <= set(
        ds.column_names)
    df = to_pandas(ds)
    assert {"attr.age", "attr.gender", "attr.education", "attr.employment_status",
            "ctx.domain"} <= set(df.columns)
    # the texts and ids agree with the truth tables
    row = ds[7]
    assert pop.responses[row["chosen_id"]] == row["chosen"]
    assert pop.prompts[row["prompt_id"]] == row["prompt"]
    i = pop.truth.annotator_index()[row["annotator_id"]]
    assert pop.truth.annotator_type[i] == row["type_id"]
    assert pop.truth.annotator_beta[i] == row["true_beta"]
    r = pop.type_rewards([row["chosen_id"], row["rejected_id"]])[row["type_id"]]
    assert r[0] - r[1] == pytest.approx(row["true_margin"])


def test_empirical_label_rates_match_bradley_terry_probabilities():
    """Orient each pair canonically (lower id first): P(first wins) = σ(β w·(x_first − x_second)).

    Probabilities are recomputed here from the saved features and weights with scipy's expit.
    Pairs are binned into deciles of that probability; each bin's count of first-wins is compared
    with its expectation via a chi-square statistic Σ (O−E)²/Σp(1−p) with 10 d.o.f.
    (Poisson-binomial
    variance); we require p-value > 1e-3, and the overall z-score |z| < 3.3.
    """
    pop = make_population(n_annotators=1000, pairs_per_annotator=50, strength="gamma", seed=11)
    df = pop.dataset.select_columns(["chosen_id", "rejected_id", "annotator_id"]).to_pandas()
    first = np.minimum(df.chosen_id, df.rejected_id).to_numpy()
    second = np.maximum(df.chosen_id, df.rejected_id).to_numpy()
    first_won = (df.chosen_id.to_numpy() == first)
    idx = df.annotator_id.map(pop.truth.annotator_index()).to_numpy()
    w = pop.truth.type_weights[pop.truth.annotator_type[idx]]
    x = pop.truth.features
    diff = np.einsum("nk,nk->n", w, x[first] - x[second])
    p = expit(pop.truth.annotator_beta[idx] * diff)
    bins = np.quantile(p, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(bins, p, side="right") - 1, 0, 9)
    observed = np.bincount(which, weights=first_won, minlength=10)
    expected = np.bincount(which, weights=p, minlength=10)
    variance = np.bincount(which, weights=p * (1 - p), minlength=10)
    chi2 = np.sum((observed - expected) ** 2 / variance)
    assert stats.chi2.sf(chi2, df=10) > 1e-3
    z = (first_won.sum() - p.sum()) / np.sqrt(variance.sum())
    assert abs(z) < 3.3
    # labels are informative: the higher-reward response wins clearly more often than chance
    assert np.mean(first_won == (diff > 0)) > 0.6


def test_homogeneous_control_one_type_constant_beta_same_items():
    cfg = PopulationConfig(n_annotators=50, pairs_per_annotator=8, seed=5)
    het, hom = make_population(cfg), make_population(cfg.homogeneous_control())
    assert hom.truth.n_types == 1 and set(hom.dataset["type_id"]) == {0}
    assert np.unique(hom.truth.annotator_beta).size == 1
    assert np.unique(hom.dataset["true_beta"]).size == 1
    assert hom.truth.annotator_beta[0] == pytest.approx(np.exp(0.0 + 0.6 ** 2 / 2))
    assert hom.dataset["item_id"] == het.dataset["item_id"]
    assert hom.dataset["annotator_id"] == het.dataset["annotator_id"]
    assert hom.responses == het.responses and hom.prompts == het.prompts
    np.testing.assert_allclose(hom.truth.type_weights[0],
                               het.truth.type_probs @ het.truth.type_weights)


def test_type_spread_zero_means_identical_types_and_spread_separates_them():
    same = make_population(n_annotators=20, pairs_per_annotator=2, type_spread=0.0)
    np.testing.assert_allclose(same.truth.type_weights, same.truth.type_weights[[0, 0, 0]])
    apart = make_population(n_annotators=20, pairs_per_annotator=2, type_spread=3.0)
    w = apart.truth.type_weights / 3.0
    assert np.min(np.linalg.norm(w[:, None] - w[None], axis=-1)[np.triu_indices(3, 1)]) > 0.3


def test_types_correlate_with_demographics():
    df = to_pandas(make_population(n_annotators=2000, pairs_per_annotator=1,
                                   demographic_signal=2.0).dataset)
    table = np.array(df.groupby(["attr.age", "type_id"]).size().unstack(fill_value=0))
    assert stats.chi2_contingency(table).pvalue < 1e-6
    independent = to_pandas(make_population(n_annotators=2000, pairs_per_annotator=1,
                                            demographic_signal=0.0).dataset)
    table = np.array(independent.groupby(["attr.age", "type_id"]).size().unstack(fill_value=0))
    assert stats.chi2_contingency(table).pvalue > 1e-4


@pytest.mark.parametrize("strength, mean", [("point", 1.0), ("lognormal", np.exp(0.18)),
                                            ("gamma", 1.0)])
def test_beta_distribution_families(strength, mean):
    pop = make_population(n_annotators=4000, pairs_per_annotator=1, strength=strength)
    beta = pop.truth.annotator_beta
    assert beta.mean() == pytest.approx(mean, rel=0.05)
    if strength == "point":
        assert np.unique(beta).size == 1
    elif strength == "gamma":
        assert stats.kstest(beta, stats.gamma(2.0, scale=0.5).cdf).pvalue > 1e-3
    else:
        assert stats.kstest(np.log(beta), stats.norm(0.0, 0.6).cdf).pvalue > 1e-3


def test_compact_text_names_the_considerations():
    pop = make_population(n_annotators=5, pairs_per_annotator=2, text_style="compact")
    for rid, text in enumerate(pop.responses):
        named = {c for c in pop.truth.considerations if c.capitalize() in text}
        assert named == {c for c, v in zip(pop.truth.considerations, pop.truth.features[rid],
                                           strict=True) if v > 0}


def test_save_and_load_round_trip(tmp_path):
    pop = make_population(n_annotators=12, pairs_per_annotator=3, strength="gamma")
    pop.save(tmp_path / "pop")
    back = load_population(tmp_path / "pop")
    assert back.dataset.data.table.equals(pop.dataset.data.table)
    np.testing.assert_array_equal(back.truth.features, pop.truth.features)
    np.testing.assert_array_equal(back.truth.type_weights, pop.truth.type_weights)
    np.testing.assert_array_equal(back.truth.annotator_beta, pop.truth.annotator_beta)
    assert back.config == pop.config and back.responses == pop.responses
    assert back.truth.strength_params == {"shape": 2.0, "rate": 2.0}


_TEXT = ["prompt", "chosen", "rejected"]


@pytest.mark.parametrize("overrides", [{}, {"text_style": "compact", "seed": 5},
                                       {"homogeneous": True, "strength": "gamma"}])
def test_chat_form_is_the_string_form_as_trl_messages_with_the_same_labels(overrides):
    from trl.data_utils import is_conversational

    strings = make_population(n_annotators=15, pairs_per_annotator=4, **overrides)
    chat = make_population(n_annotators=15, pairs_per_annotator=4, chat=True, **overrides)
    validate(chat.dataset, source="test")
    plain, messages = to_pandas(strings.dataset), to_pandas(chat.dataset)
    # labels, true margins, β, types, ids, attributes: all identical
    assert plain.drop(columns=_TEXT).equals(messages.drop(columns=_TEXT))
    for s, c in zip(strings.dataset, chat.dataset, strict=True):
        assert is_conversational(c)  # TRL's own test of its conversational format
        assert c["prompt"] == [{"role": "user", "content": s["prompt"]}]
        for name in ("chosen", "rejected"):
            assert s[name].startswith(" ") and not s[name].startswith("  ")
            assert c[name] == [{"role": "assistant", "content": s[name][1:]}]
    np.testing.assert_array_equal(chat.truth.type_weights, strings.truth.type_weights)


def test_chat_population_saves_and_loads(tmp_path):
    pop = make_population(n_annotators=6, pairs_per_annotator=3, chat=True)
    pop.save(tmp_path / "pop")
    back = load_population(tmp_path / "pop")
    assert back.config.chat and back.dataset.data.table.equals(pop.dataset.data.table)
    assert back.dataset[0]["chosen"][0]["role"] == "assistant"


@pytest.mark.parametrize("bad", [dict(n_types=0), dict(strength="weibull"), dict(sigma=0.0),
                                 dict(type_probs=[1.0]), dict(responses_per_prompt=1),
                                 dict(text_style="fancy"), dict(chat="yes")])
def test_bad_config_raises_config_error(bad):
    with pytest.raises(ConfigError):
        PopulationConfig(**bad)


def test_schema_error_is_not_config_error():
    assert not issubclass(SchemaError, ConfigError)


# sha256 of the rows as canonical JSON (python values from `Dataset.to_list()`, keys sorted;
# attributes and context parsed where the old schema stored them as JSON strings) for
# make_population(n_annotators=20, **kw), computed with the code of 9470e78, before the text
# templates moved to pluralign/resources. A CSV rendering was used before; its bytes change with
# the pandas release (pandas 3.1 renders the same rows differently).
_MAIN_FINGERPRINTS = [
    ({}, "f5716e386702d93b94febc1b12bc09321034ff8f28521444849a9a83b4ef168b"),
    ({"text_style": "compact", "seed": 3},
     "ebd2df674fe6b82afdb0faaaa652d02fabe8b6ae405d81b11832dec86bca5cef"),
]


@pytest.mark.parametrize(("overrides", "expected"), _MAIN_FINGERPRINTS)
def test_templates_resource_keeps_datasets_identical_to_before(overrides, expected):
    rows = make_population(n_annotators=20, **overrides).dataset.to_list()
    canonical = json.dumps(rows, sort_keys=True).encode()
    assert hashlib.sha256(canonical).hexdigest() == expected


def test_templates_ship_as_package_resource():
    text = resources.files("pluralign").joinpath("resources", "synthetic_templates.json")
    assert text.is_file() and "considerations" in text.read_text(encoding="utf-8")


@given(st.integers(0, 500), st.lists(st.floats(0.01, 10), min_size=1, max_size=6))
def test_exact_counts_sum_to_the_total_and_round_every_quota_down_or_up(total, weights):
    counts = exact_counts(total, np.asarray(weights))
    quota = total * np.asarray(weights) / sum(weights)
    assert counts.sum() == total
    assert all(np.floor(q) - 1e-9 <= c <= np.ceil(q) + 1e-9
               for c, q in zip(counts, quota, strict=True))


@pytest.mark.parametrize(("n", "probs", "expected"), [(100, [0.8, 0.2], [80, 20]),
                                                      (7, [0.8, 0.2], [6, 1]),
                                                      (10, [1, 1, 1], [4, 3, 3])])
def test_exact_type_shares_give_exactly_the_rounded_counts(n, probs, expected):
    for seed in (0, 1, 2):
        pop = make_population(n_annotators=n, pairs_per_annotator=3, n_types=len(probs),
                              type_probs=probs, demographic_signal=0.0,
                              exact_type_shares=True, seed=seed)
        assert np.bincount(pop.truth.annotator_type).tolist() == expected
        types = np.asarray(pop.dataset["type_id"]).reshape(n, 3)
        assert (types == pop.truth.annotator_type[:, None]).all()


@pytest.mark.parametrize("share", [0.0, 0.3, 0.45, 1.0])
def test_conflict_share_is_exact_on_the_pairs_and_labels_still_follow_the_types(share):
    pop = make_population(n_annotators=40, pairs_per_annotator=5, n_prompts=12, n_types=2,
                          strength="point", beta=5.0, conflict_share=share, seed=2)
    d, t = pop.dataset, pop.truth
    contested = []
    for a, b in zip(d["chosen_id"], d["rejected_id"], strict=True):   # brute force, per pair
        first = t.features[a] @ t.type_weights[0] - t.features[b] @ t.type_weights[0]
        second = t.features[a] @ t.type_weights[1] - t.features[b] @ t.type_weights[1]
        contested.append(first * second < 0)
    assert sum(contested) == round(share * 200)
    assert all(r // 4 == p for r, p in zip(d["rejected_id"], d["prompt_id"], strict=True))
    own = t.type_weights[np.asarray(d["type_id"])]
    margin = np.einsum("ik,ik->i", own, t.features[d["chosen_id"]] - t.features[d["rejected_id"]])
    np.testing.assert_allclose(d["true_margin"], margin, atol=1e-12)


@pytest.mark.parametrize("bad", [{"exact_type_shares": True, "demographic_signal": 1.0},
                                 {"conflict_share": 0.5, "n_types": 3},
                                 {"conflict_share": 1.5, "n_types": 2}])
def test_exact_composition_options_reject_what_they_cannot_do(bad):
    with pytest.raises(ConfigError, match="exact_type_shares|conflict_share"):
        PopulationConfig(**bad)


@pytest.mark.parametrize("overrides", [{"type_spread": 5.9e307},
                                       {"type_spread": 1e200, "reward_scale": 1e200}])
def test_overflowing_type_weights_are_refused_not_written_as_nan(overrides):
    """type_spread 5.9e307 (found by the CLI fuzz test) made the type weights NaN, and saving the
    population then failed inside json.dumps."""
    with pytest.raises(ConfigError, match="overflow the type weights"):
        make_population(PopulationConfig(n_annotators=4, **overrides))
