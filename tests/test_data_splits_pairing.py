"""Splits, subgroup subsets, paired preferences and full-information items."""

import logging
from collections import Counter

import datasets
import numpy as np
import pytest
from scipy.special import expit

from pluralign.data import SchemaError, row_attributes, validate
from pluralign.data.pairing import full_information_items, paired_preferences
from pluralign.data.schema import encode_mapping
from pluralign.data.splits import (
    filter_by_attribute,
    size_matched_subsets,
    split_by_annotator,
    train_test_split_pairs,
)
from pluralign.data.synthetic import make_population
from pluralign.errors import ConfigError


@pytest.fixture(scope="module")
def pop():
    return make_population(n_annotators=60, pairs_per_annotator=9, n_prompts=5, seed=2)


def test_split_by_pair_partitions_rows(pop):
    parts = train_test_split_pairs(pop.dataset, test_size=0.25, seed=1)
    assert len(parts["test"]) == round(0.25 * len(pop.dataset))
    assert len(parts["train"]) + len(parts["test"]) == len(pop.dataset)
    key = lambda d: Counter(zip(d["annotator_id"], d["item_id"], d["chosen"], strict=True))  # noqa: E731
    assert key(parts["train"]) + key(parts["test"]) == key(pop.dataset)
    again = train_test_split_pairs(pop.dataset, test_size=0.25, seed=1)
    assert again["test"]["item_id"] == parts["test"]["item_id"]


def test_split_by_annotator_holds_out_whole_annotators(pop):
    parts = split_by_annotator(pop.dataset, test_size=0.2, seed=0)
    train, test = set(parts["train"]["annotator_id"]), set(parts["test"]["annotator_id"])
    assert not train & test and len(test) == 12 and len(train) == 48
    assert len(parts["train"]) + len(parts["test"]) == len(pop.dataset)


def test_split_by_annotator_needs_ids():
    ds = validate(datasets.Dataset.from_dict({"prompt": ["p"] * 3, "chosen": ["a"] * 3,
                                              "rejected": ["b"] * 3}))
    with pytest.raises(SchemaError, match="row 0, field 'annotator_id'"):
        split_by_annotator(ds)
    with pytest.raises(ConfigError):
        train_test_split_pairs(ds, test_size=1.5)


def test_filter_and_size_matched_subsets(pop):
    young = filter_by_attribute(pop.dataset, "age", ["18-24 years old", "25-34 years old"])
    ages = [row_attributes(r)["age"] for r in young]
    assert set(ages) <= {"18-24 years old", "25-34 years old"}
    expected = sum(row_attributes(r)["age"] in {"18-24 years old", "25-34 years old"}
                   for r in pop.dataset)
    assert len(young) == expected
    by_domain = filter_by_attribute(pop.dataset, "domain", "work", field="context")
    assert all(c["domain"] == "work" for c in by_domain["context"])
    subsets = size_matched_subsets(pop.dataset, "gender", seed=0)
    sizes = {g: len(d) for g, d in subsets.items()}
    assert len(set(sizes.values())) == 1
    smallest = min(Counter(row_attributes(r)["gender"] for r in pop.dataset).values())
    assert next(iter(sizes.values())) == smallest
    for g, d in subsets.items():
        assert {row_attributes(r)["gender"] for r in d} == {g}
    with pytest.raises(ConfigError, match="exceeds"):
        size_matched_subsets(pop.dataset, "gender", n=10**6)


def test_paired_preferences_same_annotator_disjoint(pop, caplog):
    ds = pop.dataset.select(range(len(pop.dataset) - 1))  # the last annotator now has 8 rows
    with caplog.at_level(logging.INFO, logger="pluralign.data.pairing"):
        paired = paired_preferences(ds, seed=0)
    assert len(paired) == 59 * 4 + 4
    assert "59 odd leftovers" in caplog.text  # 59 annotators with 9 rows
    assert {"prompt_1", "chosen_2", "rejected_2", "true_margin_1", "annotator_id"} <= set(
        paired.column_names)
    # each original comparison used at most once and both halves come from the same annotator
    seen = Counter()
    lookup = {(r["annotator_id"], r["item_id"], r["chosen"]) for r in ds}
    for r in paired:
        for s in ("_1", "_2"):
            key = (r["annotator_id"], r["item_id" + s], r["chosen" + s])
            assert key in lookup
            seen[key] += 1
    multiplicity = Counter((r["annotator_id"], r["item_id"], r["chosen"]) for r in ds)
    assert all(seen[k] <= multiplicity[k] for k in seen)


def test_full_information_from_population_matches_type_probabilities():
    pop = make_population(n_annotators=200, pairs_per_annotator=30, n_prompts=150,
                          strength="point", beta=1.0, seed=4)
    items = full_information_items(pop, seed=0)
    assert len(items) == len(set(pop.dataset["item_id"]))
    labels = np.asarray(items["type_labels"])
    agreement = np.asarray(items["agreement"])
    unanimous = np.all(labels == 1, axis=1) | np.all(labels == 0, axis=1)
    assert np.array_equal(agreement == 1, unanimous) and set(agreement) <= {0, 1}
    # independent check: P(type t prefers chosen) from the truth, summed over items
    x = pop.truth.features
    diff = (x[items["chosen_id"]] - x[items["rejected_id"]]) @ pop.truth.type_weights.T
    p = expit(diff)  # beta = 1 for everyone
    # orientation depends on the labels, so compare the unoriented statistic per type:
    # the label of type t for the lower-id response
    first_is_chosen = np.asarray(items["chosen_id"]) < np.asarray(items["rejected_id"])
    label_first = np.where(first_is_chosen[:, None], labels, 1 - labels)
    p_first = np.where(first_is_chosen[:, None], p, 1 - p)
    z = (label_first.sum(0) - p_first.sum(0)) / np.sqrt((p_first * (1 - p_first)).sum(0))
    assert np.all(np.abs(z) < 3.5)


def test_full_information_until_consensus_all_agree():
    pop = make_population(n_annotators=30, pairs_per_annotator=5, seed=1)
    items = full_information_items(pop, until_consensus=True, seed=0)
    assert set(items["agreement"]) == {1}
    assert all(set(lab) == {1.0} for lab in items["type_labels"])


def test_full_information_items_of_a_chat_population_are_chat_messages():
    strings = full_information_items(make_population(n_annotators=10, seed=1), seed=0)
    chat = full_information_items(make_population(n_annotators=10, seed=1, chat=True), seed=0)
    assert chat["type_labels"] == strings["type_labels"]
    for s, c in zip(strings, chat, strict=True):
        assert c["prompt"] == [{"role": "user", "content": s["prompt"]}]
        assert c["chosen"] == [{"role": "assistant", "content": s["chosen"].strip()}]
        assert c["rejected"] == [{"role": "assistant", "content": s["rejected"].strip()}]


def test_full_information_from_dataset_groups_by_attribute():
    rows = []
    # item i1: group A (2 voters) prefers x, group B prefers x -> agreement
    # item i2: A prefers x, B prefers y -> disagreement; item i3 only labelled by A -> dropped
    for ann, grp, item, chosen, rejected in [
            ("u1", "A", "i1", "x", "y"), ("u2", "A", "i1", "x", "y"), ("u3", "B", "i1", "x", "y"),
            ("u1", "A", "i2", "x", "y"), ("u3", "B", "i2", "y", "x"),
            ("u1", "A", "i3", "x", "z")]:
        rows.append({"prompt": f"p-{item}", "chosen": chosen, "rejected": rejected,
                     "annotator_id": ann, "attributes": encode_mapping({"group": grp}),
                     "item_id": item})
    ds = validate(datasets.Dataset.from_list(rows))
    items = full_information_items(ds, by="group")
    got = {r["item_id"]: r for r in items}
    assert set(got) == {"i1", "i2"}
    assert got["i1"]["agreement"] == 1 and got["i1"]["chosen"] == "x"
    assert got["i1"]["type_labels"] == [1.0, 1.0]
    assert got["i2"]["agreement"] == 0
    assert sorted(got["i2"]["type_labels"]) == [0.0, 1.0]


def test_full_information_empty_overlap_is_an_error():
    ds = validate(datasets.Dataset.from_dict({
        "prompt": ["p", "q"], "chosen": ["a", "b"], "rejected": ["c", "d"],
        "annotator_id": ["u1", "u2"], "item_id": ["i1", "i2"], "type_id": [0, 1]}))
    with pytest.raises(ConfigError, match="overlapping"):
        full_information_items(ds)


@pytest.mark.parametrize("test_size", [1.5, 0.0, "x", float("nan"), None, True])
def test_split_fraction_errors_name_the_value(pop, test_size):
    """Issue 15 #9: test_size='x' used to raise "'<' not supported between 'float' and 'str'"."""
    for split in (train_test_split_pairs, split_by_annotator):
        with pytest.raises(ConfigError, match=r"test_size=.* is invalid; use a finite number in "
                                              r"\(0, 1\)"):
            split(pop.dataset, test_size=test_size)
