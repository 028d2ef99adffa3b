"""The schema validator: canonical storage, and SchemaError naming source, row and field."""

import datasets
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pluralign.data import SchemaError, row_attributes, row_context, to_pandas, validate
from pluralign.data.schema import encode_mapping


def _ds(**columns):
    return datasets.Dataset.from_dict(columns)


def test_validate_fills_optional_columns_and_encodes_dicts():
    ds = validate(_ds(prompt=["p1", "p2"], chosen=[" a", " b"], rejected=[" c", " d"],
                      attributes=[{"age": "18-24"}, {"age": "65+", "gender": None}]))
    assert ds["annotator_id"] == [None, None]
    assert ds["item_id"] == ["0", "1"]
    assert row_attributes(ds[0]) == {"age": "18-24"}
    assert row_attributes(ds[1]) == {"age": "65+"}  # None answers are absent keys
    assert row_context(ds[0]) == {}


def test_to_pandas_expands_mappings_with_nan_for_missing_keys():
    ds = validate(_ds(prompt=["p", "q", "r"], chosen=["a", "b", "c"], rejected=["x", "y", "z"],
                      annotator_id=["u1", "u2", "u1"],
                      attributes=[encode_mapping({"age": "1"}), encode_mapping({"gender": "F"}),
                                  encode_mapping({"age": "1"})],
                      context=[encode_mapping({"t": "unguided"})] * 3))
    df = to_pandas(ds)
    assert "attributes" not in df.columns and "context" not in df.columns
    assert df["attr.age"].tolist()[0] == "1" and df["attr.age"].isna().tolist() == [False, True,
                                                                                    False]
    assert df["attr.gender"].tolist()[1] == "F"
    assert df["ctx.t"].tolist() == ["unguided"] * 3


def test_message_lists_are_accepted():
    msg = [{"role": "user", "content": "hi"}]
    ds = validate(_ds(prompt=[msg], chosen=[[{"role": "assistant", "content": "hello"}]],
                      rejected=[[{"role": "assistant", "content": "go away"}]]))
    assert ds[0]["prompt"] == msg


@pytest.mark.parametrize("columns, row, field", [
    (dict(prompt=["p"], rejected=["r"]), None, "chosen"),
    (dict(prompt=["p", "q"], chosen=["a", "  "], rejected=["r", "s"]), 1, "chosen"),
    (dict(prompt=["p", "q", "z"], chosen=["a", "b", "c"], rejected=["r", "s", "c"]), 2, "rejected"),
    (dict(prompt=[1, 2], chosen=["a", "b"], rejected=["r", "s"]), 0, "prompt"),
    (dict(prompt=["p", None], chosen=["a", "b"], rejected=["r", "s"]), 1, "prompt"),
    (dict(prompt=["p", "q"], chosen=["a", "b"], rejected=["r", "s"],
          attributes=['{"a": "1"}', "[1, 2]"]), 1, "attributes"),
    (dict(prompt=["p", "q"], chosen=["a", "b"], rejected=["r", "s"],
          attributes=['{"a": "1"}', None]), 1, "attributes"),
    (dict(prompt=["p", "q"], chosen=["a", "b"], rejected=["r", "s"],
          context=['{"a": "1"}', '{"a": 2}']), 1, "context"),
    (dict(prompt=["p", "q"], chosen=["a", "b"], rejected=["r", "s"],
          attributes=[{"a": {"b": "1"}}, {"a": {"b": "2"}}]), 0, "attributes"),
    (dict(prompt=["p"], chosen=["a"], rejected=["r"], attributes=[3]), 0, "attributes"),
    (dict(prompt=["p"], chosen=[[{"role": "assistant", "content": " "}]],
          rejected=[[{"role": "assistant", "content": "x"}]]), 0, "chosen"),
])
def test_malformed_rows_raise_schema_error_naming_source_row_field(columns, row, field):
    with pytest.raises(SchemaError) as exc:
        validate(_ds(**columns), source="my.jsonl")
    message = str(exc.value)
    assert message.startswith("my.jsonl")
    assert f"field '{field}'" in message
    if row is not None:
        assert f"row {row}," in message


def test_validate_rejects_non_dataset():
    with pytest.raises(SchemaError, match="expected a datasets.Dataset"):
        validate([{"prompt": "p"}], source="x")


@given(st.dictionaries(st.text(min_size=1), st.text(), max_size=5))
def test_mapping_encoding_round_trips(mapping):
    assert row_attributes({"attributes": encode_mapping(mapping)}) == mapping


def test_mappings_are_structs_with_the_union_of_keys():
    rows = [{"age": "18-24"}, {"gender": "F", "age": None}, {}]
    from_dicts = validate(_ds(prompt=["p"] * 3, chosen=["a"] * 3, rejected=["b"] * 3,
                              attributes=rows))
    from_json = validate(_ds(prompt=["p"] * 3, chosen=["a"] * 3, rejected=["b"] * 3,
                             attributes=[encode_mapping(r) for r in rows]))
    for ds in (from_dicts, from_json):
        assert ds[0]["attributes"]["age"] == "18-24"
        assert ds[1]["attributes"] == {"age": None, "gender": "F"}
        assert ds[2]["attributes"] == {"age": None, "gender": None}
        assert ds.features["attributes"] == {"age": datasets.Value("string"),
                                             "gender": datasets.Value("string")}
        assert ds[0]["context"] == {}
        assert [row_attributes(r) for r in ds] == [{"age": "18-24"}, {"gender": "F"}, {}]
    assert validate(from_json) is from_json  # canonical storage is not rebuilt


def test_non_string_values_become_strings_and_null_dicts_empty():
    ds = validate(_ds(prompt=["p", "q"], chosen=["a", "b"], rejected=["r", "s"],
                      attributes=[{"n": 3}, None]))
    assert ds["attributes"] == [{"n": "3"}, {"n": None}]


def test_parquet_table_round_trips_empty_and_full_mappings(tmp_path):
    import pyarrow.parquet as pq

    from pluralign.data.schema import dataset_from_table, parquet_table

    ds = validate(_ds(prompt=["p", "q"], chosen=["a", "b"], rejected=["r", "s"],
                      attributes=[{"age": "1"}, {}]))
    assert ds.features["context"] == {}
    pq.write_table(parquet_table(ds), tmp_path / "x.parquet")
    back = validate(dataset_from_table(pq.read_table(tmp_path / "x.parquet")))
    assert back["attributes"] == ds["attributes"] and back["context"] == [{}, {}]
