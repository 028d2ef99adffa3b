"""The loader registry (pluralign.data.formats) and the one data: section (DataConfig): detection
precedence, option dataclasses, a new format as one module plus one registry line, and the
section's checks (issue 21)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets
import pytest

from pluralign.config import _docstring_help, config_from_dict, describe_fields
from pluralign.data import DataConfig, detect_format, load_preferences, make_population
from pluralign.data.formats import REGISTRY, Format, LoaderOptions
from pluralign.data.schema import SchemaError
from pluralign.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
PRISM = FIXTURES / "prism"
HH_ROW = {"chosen": "\n\nHuman: hi\n\nAssistant: yo", "rejected": "\n\nHuman: hi\n\nAssistant: no"}


def _copy(src: Path, dst: Path) -> None:
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)


def test_detection_precedence_is_registry_order(tmp_path):
    """A folder that two rules accept is the earlier format's: PRISM and HH-RLHF win over a
    saved population (pairs.parquet), which wins over a save_to_disk folder."""
    both = tmp_path / "both"
    _copy(PRISM, both)
    make_population(n_annotators=3, n_prompts=2, pairs_per_annotator=2).save(both)
    assert detect_format(both) == "prism"
    hh = tmp_path / "hh"
    _copy(FIXTURES / "hh_rlhf", hh)
    make_population(n_annotators=3, n_prompts=2, pairs_per_annotator=2).save(hh)
    assert detect_format(hh) == "hh_rlhf"
    pop = tmp_path / "pop"
    make_population(n_annotators=3, n_prompts=2, pairs_per_annotator=2).save(pop)
    datasets.Dataset.from_dict({"prompt": ["p"], "chosen": ["a"], "rejected": ["b"]}
                               ).save_to_disk(pop)
    assert detect_format(pop) == "parquet"
    order = list(REGISTRY)
    assert order.index("prism") < order.index("parquet") < order.index("hf")
    assert order.index("hh_rlhf") < order.index("jsonl")
    assert order.index("community_alignment") < order.index("csv")


@pytest.mark.parametrize("name, rows, fmt", [
    ("a.jsonl", [HH_ROW], "hh_rlhf"),
    ("a.json", [HH_ROW], "hh_rlhf"),
    ("a.jsonl", [{**HH_ROW, "annotator_id": "u"}], "jsonl"),     # not exactly chosen/rejected
    ("a.jsonl", [{"chosen": "x", "rejected": "y"}], "jsonl"),    # not a Human transcript
])
def test_json_lines_detection(tmp_path, name, rows, fmt):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert detect_format(path) == fmt


def test_every_hub_id_and_the_hub_default():
    for spec in REGISTRY.values():
        for hub_id in spec.hub_ids:
            assert detect_format(hub_id) == spec.name
    assert detect_format("someone/prefs") == "hf"
    with pytest.raises(SchemaError, match="not a Hub id"):
        detect_format("no-slash-and-no-file")


def test_unmatched_local_sources_name_every_rule(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "x.txt").write_text("hello")
    for path in (tmp_path / "empty", tmp_path / "x.txt"):
        with pytest.raises(SchemaError) as info:
            detect_format(path)
        message = str(info.value)
        assert "matches no format" in message and "pass format=" in message
        assert all(f"{name}: " in message for name in REGISTRY)


def test_every_format_documents_its_options():
    """--help prints each option's help from the options dataclass's docstring."""
    for spec in REGISTRY.values():
        assert issubclass(spec.options, LoaderOptions) and spec.rule
        documented = _docstring_help(spec.options)
        for f in dataclasses.fields(spec.options):
            assert documented.get(f.name), (spec.name, f.name)
            assert f.default is not dataclasses.MISSING  # every option has a default
        spec.options()  # the defaults are valid


@dataclass
class TSVOptions(LoaderOptions):
    """Options of a tab-separated format added by a test.

    Attributes:
        delimiter: column separator.
    """

    delimiter: str = "\t"


def _load_tsv(path: Path, options: TSVOptions) -> list[dict]:
    header, *rows = path.read_text().splitlines()
    names = header.split(options.delimiter)
    return [dict(zip(names, row.split(options.delimiter), strict=True)) for row in rows]


def test_a_new_format_is_one_module_and_one_registry_line(tmp_path, monkeypatch):
    """Registering a Format is all it takes: detection, loading, option checks, --help."""
    tsv = Format("tsv", TSVOptions, "a .tsv file", lambda p: p.suffix == ".tsv", _load_tsv,
                 lambda source, options: pytest.fail("no Hub"))
    monkeypatch.setitem(REGISTRY, "tsv", tsv)
    path = tmp_path / "pairs.tsv"
    path.write_text("prompt\tchosen\trejected\np\ta\tb\nq\tc\td\n")
    assert detect_format(path) == "tsv"
    ds = load_preferences(path, limit=1)
    assert ds["chosen"] == ["a"] and ds["item_id"] == ["0"]
    with pytest.raises(ConfigError, match=r"\['pairs'\] do not apply to format 'tsv'; it takes "
                                          r"split, limit, attributes, delimiter"):
        load_preferences(path, pairs="by_score")
    assert DataConfig(source=str(path), options={"delimiter": "\t"}).loader_options() == \
        TSVOptions(delimiter="\t")
    help_text = "\n".join(describe_fields(DataConfig))
    assert "format tsv (TSVOptions):" in help_text and "  options.delimiter: str" in help_text


def test_data_shorthand_and_option_checks():
    data = config_from_dict(DataConfig, str(PRISM), "data")
    assert data == DataConfig(source=str(PRISM))
    checked = DataConfig(source=str(PRISM), options={"pairs": "by_score", "limit": 3})
    assert checked.loader_options().pairs == "by_score"
    cases = [
        ({"options": {"language": "en"}},
         r"^data.options \['language'\] do not apply to format 'prism'; it takes split, limit, "
         r"attributes, chat, pairs, min_score_gap$"),
        ({"options": {"chat": "yes"}}, r"^data.options: PRISM chat='yes' must be true or false$"),
        ({"options": {"limit": 2.5}}, r"^data.options: limit=2.5 is invalid; use an integer"),
        ({"options": {"split": 3}}, r"^data.options: PRISM split=3 is invalid; use a text value"),
        ({"format": "hh_rlhf", "options": {"subsets": ["red-team-attempts"]}},
         r"unknown HH-RLHF subsets \['red-team-attempts'\]"),
        ({"format": "xml"}, r"^data.format: unknown format 'xml'; use one of"),
        ({"options": [1]}, r"^data.options=\[1\] is invalid; use a mapping"),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message):
            DataConfig(**{"source": str(PRISM), **change})


def test_a_path_that_does_not_exist_yet_checks_option_names_only():
    """A recipe may name data that is not there yet; loading it later refuses the path."""
    DataConfig(source="later/pairs.jsonl", options={"limit": 10, "pairs": "by_score"})
    with pytest.raises(ConfigError, match=r"\['bogus'\] are options of no format"):
        DataConfig(source="later/pairs.jsonl", options={"bogus": 1})


@pytest.mark.parametrize("change", [{"format": "jsonl"}, {"format": "xml"},
                                    {"options": {"bogus": 1}}, {"options": {"limit": 5}}])
def test_a_synthetic_source_refuses_loader_settings(change):
    """They were silently ignored before."""
    name = next(iter(change))
    with pytest.raises(ConfigError, match=rf"^data.{name}=.* is not read with data.source: "
                                          r"synthetic"):
        DataConfig(source="synthetic", **change)
    DataConfig(source="synthetic", format=None, options={})  # what config.yaml records
