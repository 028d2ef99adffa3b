"""Loaders on schema-exact fixtures (tests/fixtures, built by make_fixtures.py) and bad inputs."""

import gzip
import json
import logging
import sys
from pathlib import Path

import datasets
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pluralign.data import (
    SchemaError,
    detect_format,
    load_preferences,
    row_attributes,
    row_context,
    to_pandas,
)
from pluralign.data.formats.hh_rlhf import prompt_messages, split_transcript
from pluralign.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_fixtures as spec  # noqa: E402  (expected counts are documented beside the data)

PRISM = FIXTURES / "prism"
CA = FIXTURES / "community_alignment.csv"
HH = FIXTURES / "hh_rlhf"
GENERIC = FIXTURES / "generic"


@pytest.mark.parametrize("source, fmt", [
    (PRISM, "prism"), (CA, "community_alignment"), (HH, "hh_rlhf"),
    (HH / "helpful-base", "hh_rlhf"), (HH / "helpful-base" / "train.jsonl.gz", "hh_rlhf"),
    (GENERIC / "pairs.jsonl", "jsonl"), (GENERIC / "pairs.csv", "csv"),
    (GENERIC / "pairs.parquet", "parquet"), ("Anthropic/hh-rlhf", "hh_rlhf"),
    ("someone/some-prefs", "hf")])
def test_format_detection(source, fmt):
    assert detect_format(source if isinstance(source, str) else str(source)) == fmt


def test_prism_pairs_attributes_context(caplog):
    with caplog.at_level(logging.INFO, logger="pluralign.data.loaders"):
        ds = load_preferences(PRISM)
    assert len(ds) == spec.PRISM_PAIRS["chosen_vs_rest"] == 13
    assert "1 duplicate chosen responses" in caplog.text and "1 pairs with an empty" in caplog.text
    df = to_pandas(ds)
    # a turn with 4 rated responses yields 3 pairs: the chosen one vs each other response
    turn0 = df[(df.conversation_id == "c0") & (df.turn == 0)]
    assert len(turn0) == 3
    assert set(turn0.chosen) == {" It depends on the harm the lie prevents."}
    assert set(turn0.rejected) == {" Lying is always wrong.", " As an AI I cannot answer.",
                                   " Honesty matters, but loyalty can too."}
    row = ds[0]
    attrs = row_attributes(row)
    assert attrs["age"] == "25-34 years old" and attrs["gender"] == "Female"
    assert attrs["education"] == "University Bachelors Degree"
    assert attrs["employment_status"] == "Working full-time"
    assert attrs["religion.simplified"] == "Christian"
    assert attrs["location.reside_country"] == "United Kingdom"
    assert "self_description" not in attrs and "order_stated_prefs.values" not in attrs
    assert row_context(row) == {"conversation_type": "values guided"}
    assert row["annotator_id"] == "user0"
    # user2's lm_frequency_use is null in the survey: absent, not "None"
    assert "lm_frequency_use" not in row_attributes(ds[df.index[df.annotator_id == "user2"][0]])
    assert set(df["ctx.conversation_type"]) == {"values guided", "unguided", "controversy guided"}


def test_prism_history_prompt_text_and_chat():
    ds = load_preferences(PRISM)
    later = next(r for r in ds if r["conversation_id"] == "c0" and r["turn"] == 1)
    assert later["prompt"] == ("\n\nHuman: Is it ok to lie to protect a friend?\n\nAssistant: It "
                               "depends on the harm the lie prevents.\n\nHuman: What if it is a "
                               "small lie?\n\nAssistant:")
    assert later["chosen"] == " Small lies can still erode trust over time."
    chat = load_preferences(PRISM, chat=True)
    later = next(r for r in chat if r["conversation_id"] == "c0" and r["turn"] == 1)
    assert [m["role"] for m in later["prompt"]] == ["user", "assistant", "user"]
    assert later["chosen"] == [{"role": "assistant",
                                "content": "Small lies can still erode trust over time."}]


def test_prism_by_score_counts_and_orientation():
    ds = load_preferences(PRISM, pairs="by_score")
    assert len(ds) == spec.PRISM_PAIRS["by_score"] == 21
    df = ds.to_pandas()
    assert (df.chosen_score > df.rejected_score).all()
    # the 4-response turn with distinct scores gives all 6 = 4·3/2 pairs
    assert len(df[(df.conversation_id == "c0") & (df.turn == 0)]) == 6
    # a minimum gap removes close pairs: c0 turn 0 scores 81, 64, 35, 12; only 81-64 is <= 20
    gap = load_preferences(PRISM, pairs="by_score", min_score_gap=20).to_pandas()
    assert len(gap[(gap.conversation_id == "c0") & (gap.turn == 0)]) == 5


def test_prism_options_limit_and_attribute_selection():
    ds = load_preferences(PRISM, limit=5, attributes=["age", "gender"])
    assert len(ds) == 5
    assert set(row_attributes(ds[0])) == {"age", "gender"}
    with pytest.raises(ConfigError, match="pairs"):
        load_preferences(PRISM, pairs="everything")
    with pytest.raises(ConfigError, match="do not apply"):
        load_preferences(PRISM, language="en")


def test_community_alignment_counts_filters_and_demographics(caplog):
    with caplog.at_level(logging.INFO, logger="pluralign.data.loaders"):
        ds = load_preferences(CA)
    assert len(ds) == spec.CA_PAIRS["all"]
    assert "1 pairs with identical responses" in caplog.text
    assert "1 pairs with an empty or missing candidate" in caplog.text
    assert len(load_preferences(CA, language="en")) == spec.CA_PAIRS["en"]
    caplog.clear()
    assert len(load_preferences(CA, first_turn_only=True)) == spec.CA_PAIRS["first_turn_only"]
    assert "1 later turns (first_turn_only filter)" in caplog.text
    assert len(load_preferences(CA, pregenerated_only=True)) == 6 + 3
    df = to_pandas(ds)
    first = df[df.conversation_id == "ca-1"]
    assert len(first) == 6 and set(first[first.turn == 0].chosen) == {
        " Consider your family's culture first."}
    assert first["attr.age"].iloc[0] == "18-34" and first["attr.country"].iloc[0] == "united states"
    assert set(df["ctx.language"]) == {"en", "fr"}
    missing = df[df.conversation_id == "ca-5"]
    assert missing["attr.age"].isna().all() and (missing["attr.country"] == "india").all()
    assert " Train slowly." in set(df.chosen)  # <|end_of_text|> stripped
    # the shared pregenerated prompt: the same comparison by two annotators has one item id
    shared = df[df.conversation_id.isin(["ca-1", "ca-2"]) & (df.turn == 0)]
    assert shared.groupby("item_id").annotator_id.nunique().max() == 2
    turn1 = first[first.turn == 1].prompt.iloc[0]
    assert turn1.endswith("\n\nHuman: What if they get angry?\n\nAssistant:")
    assert "Consider your family's culture first." in turn1


def test_hh_rlhf_folder_subset_file_and_split(caplog):
    with caplog.at_level(logging.INFO, logger="pluralign.data.loaders"):
        test = load_preferences(HH, split="test")
    assert len(test) == 2 and "1 rows with an empty final response" in caplog.text
    train = load_preferences(HH)
    assert len(train) == 5
    assert {row_context(r)["subset"] for r in train} == {"helpful-base", "harmless-base"}
    assert set(train["annotator_id"]) == {None}
    helpful = load_preferences(HH, subsets=["helpful-base"])
    assert len(helpful) == 3
    egg = next(r for r in helpful if "egg" in r["prompt"])
    assert egg["prompt"] == "\n\nHuman: How do I boil an egg?\n\nAssistant:"
    assert egg["chosen"] == " Put it in boiling water for nine minutes."
    assert egg["rejected"] == " Put it in the microwave."
    assert len(load_preferences(HH / "helpful-base" / "train.jsonl.gz", limit=2)) == 2
    with pytest.raises(ConfigError, match="subsets"):
        load_preferences(HH, subsets=["red-team-attempts"])


def test_hh_chat_messages():
    row = next(r for r in load_preferences(HH, chat=True) if "cat" in r["prompt"][0]["content"])
    assert row["prompt"] == [
        {"role": "user", "content": "What is a good name for a cat?"},
        {"role": "assistant", "content": "Do you want something classic or funny?"},
        {"role": "user", "content": "Funny."}]
    assert row["chosen"] == [{"role": "assistant", "content": "How about Sir Purrs-a-Lot?"}]


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1).filter(
    lambda t: "\n\nAssistant:" not in t and "\n\nHuman:" not in t)


@given(st.lists(_text, min_size=1, max_size=5).filter(lambda x: len(x) % 2 == 1), _text, _text)
def test_hh_split_round_trips_to_the_transcripts(turns, a, b):
    prefix = "".join(("\n\nHuman: " if k % 2 == 0 else "\n\nAssistant: ") + t
                     for k, t in enumerate(turns))
    chosen, rejected = prefix + "\n\nAssistant: " + a, prefix + "\n\nAssistant: " + b
    prompt, ca, ra = split_transcript(chosen, rejected)
    assert prompt + ca == chosen and prompt + ra == rejected
    assert prompt.endswith("\n\nAssistant:") and ca == " " + a and ra == " " + b
    assert [m["role"] for m in prompt_messages(prompt)] == [
        "user" if k % 2 == 0 else "assistant" for k in range(len(turns))]


def test_generic_jsonl_parquet_csv_and_in_memory():
    for path in (GENERIC / "pairs.jsonl", GENERIC / "pairs.parquet"):
        ds = load_preferences(path)
        assert len(ds) == 3 and ds["annotator_id"] == ["u1", "u2", "u1"]
        assert row_attributes(ds[1]) == {"age": "55+", "gender": "M"}
        assert row_context(ds[2]) == {"topic": "chat"}
        assert ds["item_id"] == ["g1", "g2", "g3"] and ds["score"] == [0.9, 0.4, 0.7]
    csv = load_preferences(GENERIC / "pairs.csv",
                           column_map={"prompt": "question", "chosen": "good",
                                       "rejected": "bad", "annotator_id": "user"},
                           attribute_columns=["age"], context_columns=["topic"])
    assert row_attributes(csv[0]) == {"age": "18-24"} and row_context(csv[0]) == {"topic": "city"}
    assert csv["chosen"][1] == " No, shops would suffer."
    memory = datasets.Dataset.from_dict({"q": ["p"], "a": ["x"], "b": ["y"]})
    ds = load_preferences(memory, column_map={"prompt": "q", "chosen": "a", "rejected": "b"})
    assert ds[0]["chosen"] == "x" and ds[0]["item_id"] == "0"


def _jsonl(tmp_path, rows, name="bad.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


OK = {"prompt": "p", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize("rows, row, field", [
    ([{"prompt": "p", "chosen": "a"}, OK], 0, "rejected"),          # missing column
    ([OK, {"prompt": "p", "chosen": "a"}], 1, "rejected"),          # missing field in a row
    ([OK, dict(OK, chosen="")], 1, "chosen"),                         # empty chosen
    ([OK, OK, dict(OK, rejected="a")], 2, "rejected"),                # chosen == rejected
    ([OK, dict(OK, prompt=5)], 1, "prompt"),                           # non-string prompt
    ([OK, dict(OK, attributes=[1])], 1, "attributes"),                # attributes not a mapping
])
def test_malformed_generic_rows_name_source_row_field(tmp_path, rows, row, field):
    path = _jsonl(tmp_path, rows)
    with pytest.raises(SchemaError) as exc:
        load_preferences(path)
    message = str(exc.value)
    assert str(path) in message and f"row {row}," in message and f"field '{field}'" in message


def test_prism_survey_row_missing(tmp_path):
    folder = tmp_path / "prism"
    folder.mkdir()
    (folder / "conversations.jsonl").write_text((PRISM / "conversations.jsonl").read_text())
    survey = [json.loads(line) for line in (PRISM / "survey.jsonl").read_text().splitlines()]
    (folder / "survey.jsonl").write_text(
        "".join(json.dumps(s) + "\n" for s in survey if s["user_id"] != "user2"))
    with pytest.raises(SchemaError) as exc:
        load_preferences(folder)
    message = str(exc.value)
    assert "conversations.jsonl, row 3, field 'user_id'" in message and "'user2'" in message


@pytest.mark.parametrize("make", ["corrupt_gz", "bad_json", "missing", "binary_csv"])
def test_unreadable_files(tmp_path, make):
    if make == "corrupt_gz":
        path = tmp_path / "train.jsonl.gz"
        path.write_bytes(b"not gzip at all")
        fmt = "hh_rlhf"
    elif make == "bad_json":
        path = tmp_path / "x.jsonl"
        path.write_text(json.dumps(OK) + "\n{not json\n")
        fmt = None
    elif make == "missing":
        path, fmt = tmp_path / "nope" / "x.jsonl", None
    else:
        path = tmp_path / "x.csv"
        path.write_bytes(b"\xff\xfe\x00garbage\x00\n\xff")
        fmt = "csv"
    with pytest.raises(SchemaError) as exc:
        load_preferences(path, format=fmt)
    assert str(path) in str(exc.value)
    if make == "bad_json":
        assert "row 1" in str(exc.value)


def test_community_alignment_bad_preferred_value(tmp_path):
    frame = pd.read_csv(CA)
    frame.loc[0, "first_turn_preferred_response"] = "response_z"
    path = tmp_path / "ca.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(SchemaError, match="row 0, field 'first_turn_preferred_response'"):
        load_preferences(path)


def test_hh_record_without_rejected(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": 3}) + "\n")
    with pytest.raises(SchemaError, match="row 0, field 'rejected'"):
        load_preferences(path, format="hh_rlhf")


def test_filters_that_leave_nothing_are_errors():
    with pytest.raises(SchemaError, match="no preference pairs"):
        load_preferences(CA, language="xx")


_field = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1).filter(
    str.strip)


@given(st.lists(st.tuples(_field, _field, _field,
                          st.dictionaries(st.sampled_from(["age", "gender"]), _field)),
                min_size=1, max_size=8).filter(lambda rows: all(c != r for _, c, r, _ in rows)))
def test_generic_jsonl_round_trips(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("rt") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r,
                                        "attributes": a}) + "\n" for p, c, r, a in rows))
    ds = load_preferences(path)
    assert ds["prompt"] == [p for p, *_ in rows] and ds["rejected"] == [r for *_, r, _ in rows]
    assert [row_attributes(x) for x in ds] == [a for *_, a in rows]


def test_bad_format_option_and_split_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown format"):
        load_preferences(GENERIC / "pairs.jsonl", format="xml")
    with pytest.raises(ConfigError, match="column_map keys"):
        load_preferences(GENERIC / "pairs.jsonl", column_map={"question": "prompt"})
    with pytest.raises(ConfigError, match="single split"):
        load_preferences(GENERIC / "pairs.jsonl", split="test")
    with pytest.raises(ConfigError, match="limit"):
        load_preferences(GENERIC / "pairs.jsonl", limit=0)


@pytest.mark.parametrize("missing", [
    "./nowhere/pairs.jsonl", "../nowhere.csv", "/no/such/pairs.parquet", "~/no-such-dir-xyz/x",
    "pairs_missing.jsonl", "someone/prefs.parquet", "tests/no_such_folder"])
@pytest.mark.parametrize("fmt", [None, "jsonl", "hf"])
def test_missing_local_path_is_schema_error_never_a_hub_call(missing, fmt, monkeypatch):
    """A path-like source that does not exist names the path; datasets.load_dataset is never
    called (it would treat e.g. 'tests/no_such_folder' as a Hub id and go online)."""
    monkeypatch.chdir(Path(__file__).parent.parent)  # so that 'tests/' exists
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_hub(*args, **kwargs):
        pytest.fail(f"load_dataset called with {args}")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(SchemaError, match="no such file or folder") as info:
        load_preferences(missing, format=fmt)
    assert missing in str(info.value)


def test_hub_id_still_goes_to_the_hub(monkeypatch):
    calls = []

    def fake_hub(source, *args, **kwargs):
        calls.append(source)
        return datasets.Dataset.from_dict({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    assert len(load_preferences("someone/some-prefs")) == 1 and calls == ["someone/some-prefs"]


@pytest.mark.parametrize("source", [PRISM, CA, GENERIC / "pairs.jsonl", GENERIC / "pairs.csv",
                                    GENERIC / "pairs.parquet", "synthetic"])
def test_attributes_read_as_mappings_on_rows(source, tmp_path):
    """ds[0]["attributes"]["age"] works on every loader; keys a row lacks are None."""
    if source == "synthetic":
        from pluralign.data import make_population

        make_population(n_annotators=4, n_prompts=3, pairs_per_annotator=2).save(tmp_path)
        ds = load_preferences(tmp_path)
    elif source == GENERIC / "pairs.csv":
        ds = load_preferences(source, column_map={"prompt": "question", "chosen": "good",
                                                  "rejected": "bad", "annotator_id": "user"},
                              attribute_columns=["age"])
    else:
        ds = load_preferences(source)
    expanded = to_pandas(ds)
    for i in range(len(ds)):
        row = ds[i]
        assert set(row["attributes"]) == set(ds.features["attributes"])
        assert row["attributes"].get("age") == row_attributes(row).get("age")
        cell = expanded["attr.age"].iloc[i]
        assert (None if pd.isna(cell) else cell) == row["attributes"]["age"]
    assert any(ds[i]["attributes"]["age"] for i in range(len(ds)))


@pytest.mark.parametrize(("option", "message"), [
    ({"min_score_gap": "abc"}, r"PRISM min_score_gap='abc' is invalid; use a finite number >= 0"),
    ({"min_score_gap": float("nan")}, r"PRISM min_score_gap=nan is invalid"),
    ({"min_score_gap": -1}, r"PRISM min_score_gap=-1 is invalid"),
    ({"chat": "maybe"}, r"PRISM chat='maybe' must be true or false"),
])
def test_prism_numeric_and_flag_options_are_checked(option, message):
    """Issue 15 #9: min_score_gap=abc was accepted (exit 0, the by_score pairing then raised
    "TypeError: '<=' not supported"), chat='maybe' read as true."""
    with pytest.raises(ConfigError, match=message):
        load_preferences(PRISM, pairs="by_score", **option)
