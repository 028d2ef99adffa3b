"""Issue 15 #7, #9 and #10 through the CLI's one grammar: every bad input of the issue's list is
a one-line error of the command (naming the file, field or value and what to do) with exit 2, or
gives the right result. Before: raw tracebacks (exit 1), late failures mid-training, or silent
wrong answers. All cases fail before a model is loaded, so none needs one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_training_cli import TINY

from pluralign.cli import main
from pluralign.data import load_preferences

PRISM = Path(__file__).parent / "fixtures" / "prism"
SFT = {**TINY, "training": {k: v for k, v in TINY["training"].items()
                            if k not in ("objective", "strength")}}


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """A working folder with recipes, bad YAML, tables and a metrics.json that is a list."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(SFT))
    (tmp_path / "latin1.yaml").write_bytes("seed: 1  # r\xe9sum\xe9\n".encode("latin-1"))
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "garbage.csv").write_bytes(b"\xff\x00\x81zz\n\x93\x00")
    pd.DataFrame({"margin": [0.5, -0.2, 1.0, 0.1], "annotator_id": list("abab"),
                  "attr.age": list("xxyy")}).to_csv(tmp_path / "margins.csv", index=False)
    pd.DataFrame({"other": [1, 2]}).to_csv(tmp_path / "nomargin.csv", index=False)
    (tmp_path / "listrun").mkdir()
    (tmp_path / "listrun" / "metrics.json").write_text("[1, 2]")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"prompt": "p", "chosen": "a",
                                                      "rejected": "b"}) + "\n")
    return tmp_path


def _run(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, code, err)
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"pluralign {argv[0]}: error: "), err
    assert "Traceback" not in err and "usage:" not in err
    return lines[-1]


EVAL = ["evaluate", "model=nomodel", "data=pairs.jsonl", "--output-dir", "out"]
DIAG = ["diagnose", "margins=margins.csv", "n_boot=5", "--output-dir", "out"]
TRAIN = ["train", "--config", "train.yaml", "--output-dir", "out"]
SFT_ARGS = ["sft", "--config", "sft.yaml", "--output-dir", "out"]
CASES = {
    # 9: non-UTF-8 YAML, for every command that reads a config
    **{f"non-utf8-{' '.join(c[:2])}": (c, r"latin1.yaml: not UTF-8 text .*save the file as UTF-8")
       for c in (["train", "--config", "latin1.yaml"], ["sft", "--config", "latin1.yaml"],
                 ["data", "synthetic", "--config", "latin1.yaml", "--output-dir", "o"],
                 ["pal", "train", "data=x.jsonl", "--config", "latin1.yaml",
                  "--output-dir", "o"],
                 ["pal", "eval", "--config", "latin1.yaml"],
                 ["pal", "adapt", "--config", "latin1.yaml"],
                 ["data", "inspect", "--config", "latin1.yaml"],
                 ["data", "export", "--config", "latin1.yaml"],
                 ["simulate", "--config", "latin1.yaml"], ["demo", "--config", "latin1.yaml"],
                 ["evaluate", "--config", "latin1.yaml"], ["diagnose", "--config", "latin1.yaml"],
                 ["nbc", "--config", "latin1.yaml"], ["report", "--config", "latin1.yaml"],
                 ["experiment", "dahp", "--config", "latin1.yaml"],
                 ["experiment", "composition", "--config", "latin1.yaml"],
                 ["experiment", "pal_benchmark", "--config", "latin1.yaml"])},
    "override-invalid-yaml": ([*TRAIN, "training.learning_rate=[1,"],
                              r"override 'training.learning_rate=\[1,': invalid YAML"),
    "batch-size-0": ([*TRAIN, "training.per_device_train_batch_size=0"],
                     r"per_device_train_batch_size=0 is invalid; use an integer >= 1"),
    "batch-size-negative-sft": ([*SFT_ARGS, "training.per_device_train_batch_size=-4"],
                                r"per_device_train_batch_size=-4 is invalid"),
    "evaluate-batch-size-0": ([*EVAL, "batch_size=0"], r"batch_size=0 is invalid"),
    "n-boot-0-with-by": ([*EVAL, "by=[attr.age]", "n_boot=0"],
                         r"EvaluateConfig.n_boot=0 is invalid; use an integer >= 1"),
    "test-size-1.5": ([*TRAIN, "data.test_size=1.5"], r"data.test_size=1.5 is invalid; use a "
                      r"finite number in \[0, 1\)"),
    "test-size-x": ([*TRAIN, "data.test_size=x"], r"data.test_size='x' is invalid"),
    "n-annotators-ten": (["data", "synthetic", "population.n_annotators=ten", "--output-dir", "o"],
                         r"PopulationConfig.n_annotators='ten' is invalid; use an integer"),
    "pairs-per-annotator-inf": (["data", "synthetic", "population.pairs_per_annotator=.inf",
                                 "--output-dir", "o"], r"pairs_per_annotator=inf is invalid"),
    "model-config-string": ([*TRAIN, "model.config=big"],
                            r"model.config must be a mapping of GPTNeoXConfig fields"),
    "lora-unknown-key": ([*TRAIN, "model.lora={r: 4, bogus: 1}"],
                         r"model.lora: unknown LoraConfig key\(s\) bogus"),
    "threads-0-demo": (["demo", "threads=0"], r"DemoConfig.threads=0 is invalid"),
    # seeds and power settings that reached numpy or a comparison raw (found after the merges)
    "seed-abc-group-robust": (["experiment", "group_robust", "seed=abc", "--output-dir", "o"],
                              r"GroupRobustConfig.seed='abc' is invalid"),
    "seed-abc-pal-benchmark": (["experiment", "pal_benchmark", "seed=abc", "--output-dir", "o"],
                               r"BenchmarkConfig.seed='abc' is invalid"),
    "seed-abc-synthetic": (["data", "synthetic", "population.seed=abc", "--output-dir", "o"],
                           r"PopulationConfig.seed='abc' is invalid"),
    "power-cv2-text": ([*DIAG, "power_pairs=100", "power_cv2_b=x"],
                       r"DiagnoseConfig.power_cv2_b='x' is invalid"),
    "threads-0-pal": (["pal", "train", "data=pairs.jsonl", "threads=0", "--output-dir", "o"],
                      r"PalTrainConfig.threads=0 is invalid; use an integer >= 1"),
    # the data and pal commands on the one grammar (issue 21)
    "pal-train-no-data": (["pal", "train", "--output-dir", "o"], r"data is missing: .*data="),
    "pal-train-kind": (["pal", "train", "data=pairs.jsonl", "kind=gpt", "--output-dir", "o"],
                       r"kind='gpt' is unknown; use one of \('pal', 'bt'\)"),
    "pal-train-other-section": (["pal", "train", "data=pairs.jsonl", "kind=bt",
                                 "pal.n_prototypes=3", "--output-dir", "o"],
                                r"pal: is only read with kind: pal"),
    "pal-train-no-output-dir": (["pal", "train", "data=pairs.jsonl"],
                                r"pal train needs --output-dir DIR"),
    "pal-eval-no-model": (["pal", "eval", "data=pairs.jsonl"], r"model is missing"),
    "pal-eval-unknown-policy": (["pal", "eval", "model=m", "data=pairs.jsonl", "unknown=skip"],
                                r"unknown='skip' is invalid; use one of"),
    "pal-eval-test-size": (["pal", "eval", "model=m", "data=pairs.jsonl", "data.test_size=0.5"],
                           r"data.test_size=0.5: pal eval reads the whole dataset"),
    "pal-adapt-n-0": (["pal", "adapt", "model=m", "data=pairs.jsonl", "n=0", "--output-dir",
                       "o"], r"PalAdaptConfig.n=0 is invalid"),
    "pal-no-action": (["pal"], r"choose an action"),
    "data-no-subcommand": (["data"], r"choose a subcommand"),
    "data-positional-source": (["data", "inspect", "pairs.jsonl"],
                               r"override 'pairs.jsonl' is not of the form key=value"),
    "data-inspect-no-data": (["data", "inspect"], r"data is missing"),
    "export-to-csv": (["data", "export", "data=pairs.jsonl", "to=csv", "--output-dir", "o"],
                      r"to='csv' is not an export format"),
    "synthetic-no-output-dir": (["data", "synthetic"], r"data synthetic needs --output-dir"),
    "synthetic-source-format": (["train", "--config", "train.yaml", "data.format=xml"],
                                r"data.format='xml' is not read with data.source: synthetic"),
    "synthetic-source-options": (["data", "inspect", "data=synthetic", "data.options={bogus: 1}"],
                                 r"data.options=\{'bogus': 1\} is not read with data.source: "
                                 r"synthetic"),
    "unknown-loader-option": (["data", "inspect", f"data={PRISM}", "data.options.language=en"],
                              r"data.options \['language'\] do not apply to format 'prism'; "
                              r"it takes split, limit, attributes, chat, pairs, min_score_gap"),
    "loader-option-type": (["data", "inspect", f"data={PRISM}", "data.options.chat=maybe"],
                           r"data.options: PRISM chat='maybe' must be true or false"),
    "unknown-format": (["data", "export", "data=pairs.jsonl", "data.format=xml",
                        "--output-dir", "o"], r"data.format: unknown format 'xml'"),
    "baseline-margins-empty": ([*EVAL, "by=[attr.age]", "baseline_margins=empty.csv"],
                               r"empty.csv: cannot read it as csv"),
    "baseline-margins-garbage": ([*EVAL, "by=[attr.age]", "baseline_margins=garbage.csv"],
                                 r"garbage.csv: cannot read it as csv"),
    "margins-empty": (["diagnose", "margins=empty.csv", "--output-dir", "o"],
                      r"empty.csv: cannot read it as csv"),
    "margins-garbage": (["diagnose", "margins=garbage.csv", "--output-dir", "o"],
                        r"garbage.csv: cannot read"),
    "margins-no-margin-column": (["diagnose", "margins=nomargin.csv", "--output-dir", "o"],
                                 r"nomargin.csv: no 'margin' column; columns: \['other'\]"),
    "missing-cluster-column": ([*DIAG, "cluster=nope"], r"margins.csv: no 'nope' column"),
    "missing-compare-column": (["diagnose", "compare.a=margins.csv", "compare.b=nomargin.csv",
                                "--output-dir", "o"], r"nomargin.csv: no 'margin' column"),
    "missing-data-source": (["evaluate", "model=nomodel", "data=nopop", "--output-dir", "out"],
                            r"nopop: no such file or folder"),
    "missing-population-diagnose": (["diagnose", "population=nopop", "--output-dir", "o"],
                                    r"nopop: not a saved synthetic population"),
    "metrics-json-list": (["report", "--output-dir", "listrun"],
                          r"metrics.json: expected a JSON object .*got a list"),
    "column-map-5": (["data", "inspect", "data=pairs.jsonl", "data.options.column_map=5"],
                     r"column_map=5 is invalid; use a mapping"),
    "prism-min-score-gap-abc": (["data", "inspect", f"data={PRISM}", "data.options.pairs=by_score",
                                 "data.options.min_score_gap=abc"],
                                r"PRISM min_score_gap='abc' is invalid"),
    "limit-0": (["data", "inspect", f"data={PRISM}", "data.options.limit=0"],
                r"data.options: limit=0 is invalid; use an integer >= 1"),
    "level-1.5": ([*DIAG, "level=1.5"], r"unknown option\(s\) level"),
    # 10: late or misleading validation
    "inf-beta": ([*TRAIN, "training.beta=.inf"], r"beta=inf is"),
    "inf-learning-rate": ([*TRAIN, "training.learning_rate=.inf"],
                          r"PreferenceConfig.learning_rate=inf is invalid; use a finite number"),
    "inf-strength-learning-rate": ([*TRAIN, "training.strength_learning_rate=.inf"],
                                   r"strength_learning_rate=inf is invalid"),
    "nan-sft-learning-rate": ([*SFT_ARGS, "training.learning_rate=.nan"],
                              r"SFTConfig.learning_rate=nan is invalid"),
    "string-learning-rate": ([*TRAIN, "training.learning_rate=abc"],
                             r"learning_rate='abc' is invalid; use a finite number >= 0"),
    "unknown-model-config-key": ([*TRAIN, "model.config.not_a_key=3"],
                                 r"model.config: unknown key\(s\) \['not_a_key'\]"),
    "tokenizer-vocab-size-negative": ([*TRAIN, "model.tokenizer_vocab_size=-5"],
                                      r"model.tokenizer_vocab_size=-5 is invalid"),
    "missing-relative-path": (["data", "inspect", "data=inputs/missing.jsonl"],
                              r"inputs/missing.jsonl: no such file or folder .*not looked up on "
                              r"the Hugging Face Hub"),
    "missing-relative-data-source": ([*TRAIN, "data={source: inputs/missing.jsonl}"],
                                     r"not looked up on the Hugging Face Hub"),
    # 7: a prompt limit above the total limit made every margin 0.0
    "evaluate-lengths": ([*EVAL, "max_length=5", "max_prompt_length=10"],
                         r"EvaluateConfig.max_prompt_length=10 must be in \[0, max_length=5\)"),
    # --output-dir problems
    "output-dir-is-a-file": ([*DIAG[:-1], "afile"], r"afile is a file, not a folder"),
    "output-dir-below-a-file": ([*DIAG[:-1], "afile/sub"], r"afile is a file, not a folder"),
    "output-dir-empty": ([*EVAL[:-1], ""], r"--output-dir is empty"),
    "output-dir-file-synthetic": (["data", "synthetic", "--output-dir", "afile"],
                                  r"afile is a file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_a_one_line_error(work, capsys, case):
    argv, message = CASES[case]
    line = _run(argv, capsys)
    assert re.search(message, line), line
    assert not (work / "out").exists()  # refused before anything was written


def test_a_single_attribute_name_is_one_name_not_its_characters(capsys):
    """attributes="age" was iterated as characters: every attribute was silently dropped."""
    ds = load_preferences(PRISM, attributes="age")
    assert list(ds.features["attributes"]) == ["age"]


def test_a_single_subgroup_column_is_one_column(work, capsys):
    """by=attr.age (a string, not a list) is the one column attr.age."""
    assert main(["diagnose", "margins=margins.csv", "by=attr.age", "n_boot=5",
                 "--output-dir", "diag"]) == 0
    config = yaml.safe_load((work / "diag" / "config.yaml").read_text())
    assert config["by"] == ["attr.age"]
    assert json.loads((work / "diag" / "metrics.json").read_text())["diagnosis"]


def test_dahp_at_a_huge_beta_reports_spearman_as_undefined(work):
    """Found by the property test: at beta = 5.5e16 pi* is uniform, Spearman's rho is undefined,
    and the NaN it gave made writing metrics.json raise a ValueError traceback."""
    (work / "dahp.yaml").write_text(yaml.safe_dump({
        "environment": {"num_states": 4, "num_actions": 6, "shifts": [-1, 0, 1],
                        "beta": 5.5e16},
        "experiment": {"num_pairs": 300, "num_paired": 300, "num_full": 300, "steps": 3,
                       "methods": ["dpo"]}}))
    assert main(["experiment", "dahp", "--config", "dahp.yaml", "--output-dir", "dahp"]) == 0
    metrics = json.loads((work / "dahp" / "metrics.json").read_text())
    assert metrics["dpo"]["spearman_optimal"] is None
