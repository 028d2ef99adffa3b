"""Group ids from attributes, context fields and plain columns; missing values; name tables."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from pluralign.data import SchemaError, make_population
from pluralign.data.groups import UNKNOWN, add_group_column, group_ids
from pluralign.data.schema import encode_mapping


def _pairs(ages, clusters):
    return datasets.Dataset.from_dict({
        "prompt": ["p"] * len(ages), "chosen": ["a"] * len(ages), "rejected": ["b"] * len(ages),
        "attributes": [encode_mapping({} if a is None else {"age": a}) for a in ages],
        "context": [encode_mapping({"domain": "work"})] * len(ages),
        "cluster": clusters})


def test_attribute_context_and_column_groups_get_sorted_ids():
    data = _pairs(["65+", "18-24", "65+"], [10, 2, 2])
    age = group_ids(data, "attr.age")
    assert age.names == ["18-24", "65+"] and age.ids.tolist() == [1, 0, 1]
    assert group_ids(data, "ctx.domain").ids.tolist() == [0, 0, 0]
    cluster = group_ids(data, "cluster")
    assert cluster.names == ["2", "10"] and cluster.ids.tolist() == [1, 0, 0]  # numeric order
    assert cluster.counts().tolist() == [2, 1]


def test_missing_values_raise_naming_the_row_or_become_unknown():
    data = _pairs(["65+", None, "18-24"], [1, 1, 1])
    with pytest.raises(SchemaError, match=r"row 1, field 'attr.age'"):
        group_ids(data, "attr.age")
    groups = group_ids(data, "attr.age", missing="unknown")
    assert groups.names == ["18-24", "65+", UNKNOWN] and groups.ids.tolist() == [1, 2, 0]


def test_a_fixed_name_table_keeps_training_ids_and_rejects_new_values():
    train = group_ids(_pairs(["a", "b"], [0, 0]), "attr.age")
    test = _pairs(["b", "b", "c"], [0, 0, 0])
    with pytest.raises(SchemaError, match=r"row 2.*'c' is not in the group name table"):
        group_ids(test, "attr.age", names=train.names)
    assert group_ids(test.select([0, 1]), "attr.age", names=train.names).ids.tolist() == [1, 1]


def test_unknown_column_names_the_choices():
    with pytest.raises(SchemaError, match="no such column"):
        group_ids(_pairs(["a"], [0]), "nope")


def test_population_latent_types_as_a_group_column():
    pop = make_population(n_annotators=10, pairs_per_annotator=3, n_types=2, n_prompts=5)
    data, groups = add_group_column(pop.dataset, "type_id")
    assert data["group"] == np.asarray(pop.dataset["type_id"]).tolist()
    assert groups.names == ["0", "1"]


def test_struct_attributes_and_an_attribute_nobody_has():
    """A struct attributes column (dicts) ended in 'TypeError: unhashable type: dict'."""
    data = datasets.Dataset.from_dict({"attributes": [{"age": "65+"}, {"age": "18-24"}]})
    assert group_ids(data, "attr.age").names == ["18-24", "65+"]
    with pytest.raises(SchemaError, match=r"no pair has 'nosuch'; use one of \['attr.age'\]"):
        group_ids(data, "attr.nosuch")
    partial = _pairs(["65+", None], [0, 0])
    with pytest.raises(SchemaError, match=r"row 1, field 'attr.age'.*no group value"):
        group_ids(partial, "attr.age")
