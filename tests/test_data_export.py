"""Export in TRL's preference format (jsonl / parquet / save_to_disk) and the round trip back."""

import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import yaml

from pluralign.cli import main
from pluralign.data import load_preferences, make_population, to_pandas, validate
from pluralign.data.export import EXPORT_FORMATS, export_preferences
from pluralign.data.pairing import full_information_items, paired_preferences
from pluralign.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"


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


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_cli_export_prism_round_trips_and_records_counts(fmt, tmp_path, capsys):
    prism = str(FIXTURES / "prism")
    out = tmp_path / "export"
    assert main(["data", "export", f"data={prism}", f"to={fmt}", "--output-dir", str(out),
                 "data.options.pairs=by_score"]) == 0
    want = to_pandas(load_preferences(prism, pairs="by_score"))
    counts = {"rows": len(want), "annotators": want["annotator_id"].nunique(),
              "items": want["item_id"].nunique(), "prompts": want["prompt"].nunique()}
    path = out / {"trl-jsonl": "train.jsonl", "parquet": "train.parquet", "hf": "train"}[fmt]
    printed = "".join(capsys.readouterr().out.split())    # rich may wrap long paths
    assert f"{counts['rows']}rows,{counts['annotators']}annotators" in printed
    assert str(path) in printed
    back = load_preferences(path)
    _same_frames(to_pandas(back), want)
    assert back[0]["attributes"]["age"] == want["attr.age"].iloc[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == {"kind": "pairs", "format": fmt, "path": str(path), **counts}
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["source"] == prism and config["to"] == fmt
    assert config["data"]["options"] == {"pairs": "by_score"}


def test_cli_export_errors_are_one_line_exit_2(tmp_path, capsys):
    out = str(tmp_path / "export")
    assert main(["data", "export", f"data={FIXTURES / 'missing.jsonl'}", "--output-dir",
                 out]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["data", "export", f"data={FIXTURES / 'prism'}", "data.options.bananas=3",
                 "--output-dir", out]) == 2
    err = capsys.readouterr().err
    assert "bananas" in err and err.count("\n") == 1
    assert main(["data", "export", f"data={FIXTURES / 'prism'}", "to=csv", "--output-dir",
                 out]) == 2
    assert "to='csv' is not an export format" in capsys.readouterr().err
    assert not (tmp_path / "export").exists()
