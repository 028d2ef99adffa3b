"""`pluralign data inspect` / `pluralign data synthetic` through the real dispatcher."""

from pathlib import Path

from pluralign.cli import main
from pluralign.data.synthetic import load_population

FIXTURES = Path(__file__).parent / "fixtures"


def test_inspect_prism_prints_counts_subgroups_and_small_group_warnings(capsys):
    assert main(["data", "inspect", str(FIXTURES / "prism"), "--by", "age",
                 "conversation_type", "--min-pairs", "4", "--min-annotators", "1"]) == 0
    out = capsys.readouterr().out
    assert "│ pairs " in out and "13 │" in out
    assert "annotators" in out and "prompts" in out
    assert "subgroups by age" in out and "subgroups by conversation_type" in out
    assert "18-24 years old" in out and "values guided" in out
    # 18-24 has 2 pairs and controversy guided 1 (< --min-pairs 4): warned; values guided is not
    assert "age='18-24 years old': only 2 pairs" in out
    assert "conversation_type='controversy guided': only 1 pairs" in out
    assert "conversation_type='values guided'" not in out


def test_inspect_passes_loader_options_and_reports_anonymous_data(tmp_path, capsys):
    assert main(["data", "inspect", str(FIXTURES / "prism"), "pairs=by_score",
                 "--examples", "0"]) == 0
    assert "21 │" in capsys.readouterr().out
    options = tmp_path / "loader.yaml"
    options.write_text("pairs: by_score\n")  # --config: the same loader options as a file
    assert main(["data", "inspect", str(FIXTURES / "prism"), "--config", str(options),
                 "--examples", "0"]) == 0
    assert "21 │" in capsys.readouterr().out
    assert main(["data", "inspect", str(FIXTURES / "hh_rlhf"), "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "none (anonymous)" in out and "subgroups by subset" in out


def test_inspect_errors_are_one_line_exit_2(capsys):
    assert main(["data", "inspect", str(FIXTURES / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["data", "inspect", str(FIXTURES / "prism"), "oops"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_synthetic_writes_population_that_inspect_reads(tmp_path, capsys):
    out = tmp_path / "pop"
    assert main(["data", "synthetic", "--output-dir", str(out), "n_annotators=12",
                 "pairs_per_annotator=3", "--homogeneous"]) == 0
    population = load_population(out)
    assert len(population.dataset) == 36 and population.truth.n_types == 1
    assert main(["data", "inspect", str(out), "--by", "gender"]) == 0
    assert "36 │" in capsys.readouterr().out
    assert main(["data", "synthetic", "--output-dir", str(tmp_path / "x"), "n_bananas=3"]) == 2
    assert "n_bananas" in capsys.readouterr().err
