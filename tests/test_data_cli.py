"""`pluralign data inspect | synthetic | export` through the real dispatcher, on the one grammar
(``data=PATH`` / ``data.source``, ``data.options.*``, ``--config`` = the command's own config)."""

import json
from pathlib import Path

import yaml

from pluralign.cli import main
from pluralign.data.synthetic import load_population

FIXTURES = Path(__file__).parent / "fixtures"
PRISM = FIXTURES / "prism"


def test_inspect_prism_prints_counts_subgroups_and_small_group_warnings(capsys):
    assert main(["data", "inspect", f"data={PRISM}", "by=[age, conversation_type]",
                 "min_pairs=4", "min_annotators=1"]) == 0
    out = capsys.readouterr().out
    assert "│ pairs " in out and "13 │" in out
    assert "annotators" in out and "prompts" in out
    assert "subgroups by age" in out and "subgroups by conversation_type" in out
    assert "18-24 years old" in out and "values guided" in out
    # 18-24 has 2 pairs and controversy guided 1 (< min_pairs 4): warned; values guided is not
    assert "age='18-24 years old': only 2 pairs" in out
    assert "conversation_type='controversy guided': only 1 pairs" in out
    assert "conversation_type='values guided'" not in out


def test_inspect_passes_loader_options_and_reports_anonymous_data(tmp_path, capsys):
    assert main(["data", "inspect", f"data={PRISM}", "data.options.pairs=by_score",
                 "examples=0"]) == 0
    assert "21 │" in capsys.readouterr().out
    config = tmp_path / "inspect.yaml"  # --config: the command's own config, as a file
    config.write_text(yaml.safe_dump({"data": {"source": str(PRISM),
                                               "options": {"pairs": "by_score"}},
                                      "examples": 0}))
    assert main(["data", "inspect", "--config", str(config)]) == 0
    assert "21 │" in capsys.readouterr().out
    assert main(["data", "inspect", f"data.source={FIXTURES / 'hh_rlhf'}",
                 "data.options.split=test"]) == 0
    out = capsys.readouterr().out
    assert "none (anonymous)" in out and "subgroups by subset" in out


def test_inspect_a_synthetic_data_section(capsys):
    """data=synthetic is the same data: section train reads."""
    assert main(["data", "inspect", "data=synthetic", "data.population.n_annotators=5",
                 "data.population.pairs_per_annotator=4", "by=gender", "examples=0"]) == 0
    out = capsys.readouterr().out
    assert "synthetic (synthetic)" in out and "20 │" in out and "subgroups by gender" in out


def test_inspect_errors_are_one_line_exit_2(capsys):
    assert main(["data", "inspect", f"data={FIXTURES / 'missing.jsonl'}"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["data", "inspect", f"data={PRISM}", "oops"]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["data", "inspect", f"data={PRISM}", "data.test_size=0.2"]) == 2
    assert "reads the whole dataset" in capsys.readouterr().err


def test_synthetic_writes_population_that_inspect_reads(tmp_path, capsys):
    out = tmp_path / "pop"
    assert main(["data", "synthetic", "--output-dir", str(out), "population.n_annotators=12",
                 "population.pairs_per_annotator=3", "population.homogeneous=true"]) == 0
    population = load_population(out)
    assert len(population.dataset) == 36 and population.truth.n_types == 1
    assert main(["data", "inspect", f"data={out}", "by=gender"]) == 0
    assert "36 │" in capsys.readouterr().out
    assert main(["data", "synthetic", "--output-dir", str(tmp_path / "x"),
                 "population.n_bananas=3"]) == 2
    assert "n_bananas" in capsys.readouterr().err


def test_inspect_records_counts_and_the_detected_format(tmp_path):
    run = tmp_path / "run"
    assert main(["data", "inspect", f"data={FIXTURES / 'community_alignment.csv'}",
                 "data.options.language=en", "--output-dir", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["format"] == "community_alignment" and metrics["pairs"] > 0
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["options"] == {
        "language": "en"}
