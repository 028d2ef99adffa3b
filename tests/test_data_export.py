"""Export in TRL's preference format (jsonl / parquet / save_to_disk) and the round trip back."""

import datasets
import numpy as np
import pandas as pd
import pytest

from pluralign.data import load_preferences, make_population, to_pandas, validate
from pluralign.data.export import EXPORT_FORMATS, export_preferences
from pluralign.data.pairing import full_information_items, paired_preferences
from pluralign.errors import ConfigError


@pytest.fixture(scope="module")
def pop():
    return make_population(n_annotators=12, n_prompts=6, pairs_per_annotator=5, seed=4)


def _same_frames(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert sorted(got.columns) == sorted(want.columns)
    for column in want.columns:
        a, b = got[column].tolist(), want[column].tolist()
        if want[column].dtype.kind == "f":
            np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-13)
        else:
            assert [None if x is None or x != x else x for x in a] == \
                [None if x is None or x != x else x for x in b], column


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_pairs_round_trip_through_load_preferences(pop, fmt, tmp_path):
    result = export_preferences(pop.dataset, tmp_path, fmt)
    frame = to_pandas(pop.dataset)
    assert (result.kind, result.rows) == ("pairs", len(pop.dataset))
    assert result.annotators == frame["annotator_id"].nunique() == 12
    assert result.items == frame["item_id"].nunique()
    assert result.prompts == frame["prompt"].nunique()
    back = load_preferences(result.path)
    assert back.column_names[:7] == pop.dataset.column_names[:7]
    assert back[0]["attributes"]["age"] == pop.dataset[0]["attributes"]["age"]
    _same_frames(to_pandas(back), frame)


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_paired_preferences_become_two_pairs_per_row(pop, fmt, tmp_path):
    paired = paired_preferences(pop.dataset, seed=1)
    result = export_preferences(paired, tmp_path, fmt)
    assert (result.kind, result.rows) == ("paired_preferences", 2 * len(paired))
    back = to_pandas(load_preferences(result.path))
    src = paired.to_pandas()
    first, second = back[back.pair_position == 1], back[back.pair_position == 2]
    assert first.pair_id.tolist() == second.pair_id.tolist() == list(range(len(paired)))
    for column in ("prompt", "chosen", "rejected", "item_id", "true_margin"):
        assert first[column].tolist() == src[f"{column}_1"].tolist()
        assert second[column].tolist() == src[f"{column}_2"].tolist()
    assert first.annotator_id.tolist() == second.annotator_id.tolist() == src.annotator_id.tolist()


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_full_information_items_keep_labels_and_empty_attributes(pop, fmt, tmp_path):
    items = full_information_items(pop, seed=2)
    result = export_preferences(items, tmp_path, fmt)
    assert (result.kind, result.rows, result.annotators) == ("full_information_items",
                                                             len(items), 0)
    back = load_preferences(result.path)
    assert back["type_labels"] == items["type_labels"]
    assert back["agreement"] == items["agreement"]
    assert back[0]["attributes"] == {} and back["context"] == items["context"]


def test_jsonl_is_trl_standard_format_readable_by_datasets(pop, tmp_path):
    result = export_preferences(pop.dataset, tmp_path, "trl-jsonl")
    assert result.path == tmp_path / "train.jsonl"
    raw = datasets.load_dataset("json", data_files=str(result.path), split="train")
    assert raw[0]["prompt"] == pop.dataset[0]["prompt"]
    assert raw[0]["chosen"] == pop.dataset[0]["chosen"]
    assert raw[0]["attributes"] == pop.dataset[0]["attributes"]


def test_chat_pairs_and_re_export_replaces(tmp_path):
    msg = [{"role": "user", "content": "hi"}]
    ds = validate(datasets.Dataset.from_dict({
        "prompt": [msg], "chosen": [[{"role": "assistant", "content": "hello"}]],
        "rejected": [[{"role": "assistant", "content": "go"}]]}))
    for _ in range(2):  # a second export over the first replaces it
        result = export_preferences(ds, tmp_path, "hf")
    back = load_preferences(result.path)
    assert back[0]["prompt"] == msg and back[0]["chosen"][0]["content"] == "hello"


def test_unknown_format_is_config_error(pop, tmp_path):
    with pytest.raises(ConfigError, match="unknown export format"):
        export_preferences(pop.dataset, tmp_path, "csv")
