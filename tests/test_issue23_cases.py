"""Issue 23, items 2, 3, 4, 6 (without resume) and 7: each bad input is refused with one line
naming the field and the fix (exit 2 from the CLI), or gets the documented right answer.
bench/probe_cases.py tries the same cases and counts the outcomes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pluralign.cli import main
from pluralign.data import load_preferences
from pluralign.data.config import DataConfig
from pluralign.data.schema import SchemaError
from pluralign.data.synthetic import PopulationConfig, make_population
from pluralign.errors import ConfigError, PluralignError
from pluralign.evaluation.diagnose import fit_verdict
from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.judges import redact_userinfo
from pluralign.evaluation.strength_fit import fit_strength
from pluralign.objectives.dahp import CORRECTION_FLOOR, corrected_dpo_loss
from pluralign.social_choice import SocialChoiceError
from pluralign.social_choice.surveys import read_survey
from pluralign.training import PreferenceConfig, SFTConfig
from pluralign.training.recipe import strength_warnings

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- item 2: wide survey files ------------------------------------------------------------


def _wide(tmp_path: Path, rows: list[dict], columns=("party", "Q1", "Q2")) -> Path:
    path = tmp_path / "wide.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("rows", "extra", "message"), [
    ([{"party": "R", "Q1": "", "Q2": ""}] * 4, {}, "no valid answer"),
    ([{"party": "R", "Q1": 99, "Q2": 98}] * 4, {}, "no valid answer"),
    ([{"party": "", "Q1": 1, "Q2": 2}] * 4, {}, "no respondent has a type"),
    ([{"party": 9, "Q1": 1, "Q2": 2}] * 4, {"type_missing_codes": [9]},
     "no respondent has a type"),
    ([], {}, "no respondents"),
], ids=["answers-empty", "answers-missing-codes", "types-empty", "types-missing-codes",
        "no-rows"])
def test_wide_file_without_usable_cells_is_refused(tmp_path, rows, extra, message):
    path = _wide(tmp_path, rows)
    with pytest.raises(SocialChoiceError, match=message):
        read_survey(path, "party", **extra)
    assert main(["nbc", f"table={path}", "type_column=party",
                 *[f"{k}={v}" for k, v in extra.items()],
                 "--output-dir", str(tmp_path / "out")]) == 2


def _weighted(tmp_path: Path, weight_name: str) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "w.csv"
    pd.DataFrame({"party": rng.choice(["R", "D"], 200), "Q1": rng.choice([1, 2, 3, 99], 200),
                  weight_name: rng.uniform(0.2, 3, 200).round(4)}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name", ["WEIGHT_W79", "svy_w"])  # by name / by its values
def test_a_weight_column_is_not_analysed_as_a_question(tmp_path, name):
    path = _weighted(tmp_path, name)
    with pytest.raises(SocialChoiceError, match=f"column '{name}'.*weight_column={name}"):
        read_survey(path, "party")
    survey = read_survey(path, "party", weight_column=name)  # the fix the message names
    assert list(survey.options) == ["Q1"] and survey.options["Q1"] == ["1", "2", "3"]
    assert read_survey(path, "party", questions=["Q1"]).options == {"Q1": ["1", "2", "3"]}


def test_a_small_integer_question_is_still_a_question(tmp_path):
    path = _wide(tmp_path, [{"party": p, "Q1": q, "Q2": q % 4}
                            for p, q in zip("RD" * 30, range(60), strict=True)])
    assert len(read_survey(path, "party").options["Q1"]) == 60  # integral codes: a question


def test_the_type_column_is_not_its_own_question(tmp_path):
    path = _wide(tmp_path, [{"party": "R", "Q1": 1, "Q2": 2}, {"party": "D", "Q1": 2, "Q2": 1}])
    with pytest.raises(SocialChoiceError, match="questions names 'party', the type or weight"):
        read_survey(path, "party", questions=["party", "Q1"])


# ---- item 3 and the judge URL (item 7): evaluate -------------------------------------------


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    from pluralign.training import build_tokenizer, tiny_gpt_neox

    folder = tmp_path_factory.mktemp("evaluate")
    pop = make_population(PopulationConfig(n_annotators=4, pairs_per_annotator=3, n_prompts=4,
                                           text_style="compact", seed=0))
    pop.save(folder / "pop")
    tok = build_tokenizer(list(pop.dataset["prompt"]) + list(pop.dataset["chosen"]),
                          vocab_size=300)
    tiny_gpt_neox(len(tok), seed=1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=32).save_pretrained(folder / "policy")
    tok.save_pretrained(folder / "policy")
    assert main(["evaluate", f"model={folder / 'policy'}", f"data={folder / 'pop'}",
                 "--output-dir", str(folder / "base")]) == 0
    return folder


def _evaluate(folder: Path, out: Path, *extra: str) -> int:
    return main(["evaluate", f"model={folder / 'policy'}", f"data={folder / 'pop'}", *extra,
                 "--output-dir", str(out)])


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"), ("", "cannot read it as csv"), ("x\n1\n", "no 'margin' column"),
    ("margin\n1.0\n2.0\n", "2 rows but this evaluation scores 12 pairs")],
    ids=["missing", "empty", "no-margin", "wrong-length"])
def test_a_bad_baseline_is_refused_without_by(policy, tmp_path, capsys, content, message):
    baseline = tmp_path / "b.csv"
    if content is not None:
        baseline.write_text(content)
    assert _evaluate(policy, tmp_path / "out", f"baseline_margins={baseline}") == 2
    assert message in capsys.readouterr().err


def test_a_baseline_without_by_gives_the_mean_gain(policy, tmp_path):
    base = pd.read_csv(policy / "base" / "margins.csv")
    shifted = tmp_path / "shifted.csv"
    base.assign(margin=base["margin"] - 0.5).to_csv(shifted, index=False)
    assert _evaluate(policy, tmp_path / "out", f"baseline_margins={shifted}") == 0
    gain = json.loads((tmp_path / "out" / "metrics.json").read_text())["differences"]
    assert gain["policy − baseline (micro)"]["mean"] == pytest.approx(0.5, abs=1e-6)


def test_the_judge_url_password_never_reaches_the_run_folder(policy, tmp_path, monkeypatch):
    monkeypatch.delenv("PLURALIGN_TEST_NO_KEY", raising=False)
    code = _evaluate(policy, tmp_path / "out", "judge_url=http://user:SECRET@127.0.0.1:9/v1",
                     "judge_name=j", f"model.ref_model={policy / 'policy'}", "n_prompts=1",
                     "judge_key_env=PLURALIGN_TEST_NO_KEY")
    assert code == 2  # the key variable is unset: the run fails after config.yaml is written
    written = (tmp_path / "out" / "config.yaml").read_text()
    assert "SECRET" not in written and "http://***@127.0.0.1:9/v1" in written


def test_redact_userinfo():
    assert redact_userinfo("https://u:p@h.example:8/v1?q=1") == "https://***@h.example:8/v1?q=1"
    assert redact_userinfo("https://h.example/v1") == "https://h.example/v1"


# ---- item 4: diagnose --------------------------------------------------------------------


def _diagnose(tmp_path: Path, margins, *extra: str) -> int:
    pd.DataFrame({"margin": margins}).to_csv(tmp_path / "m.csv", index=False)
    return main(["diagnose", f"margins={tmp_path / 'm.csv'}", "n_boot=0", *extra,
                 "--output-dir", str(tmp_path / "out")])


def test_margins_whose_signs_carry_no_information_are_reported_unidentified(tmp_path):
    rng = np.random.default_rng(0)
    assert _diagnose(tmp_path, rng.choice([-1e4, 1e4], 200)) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["summary"][0].startswith("strength scale not identified")
    assert "not identified" in metrics["diagnostics"]["strength scale"]
    assert not any("heterogeneous" in line for line in metrics["summary"])


def test_a_fit_on_labels_at_chance_has_the_unidentified_verdict():
    rng = np.random.default_rng(2)
    fit = fit_strength(rng.choice([-1e4, 1e4], 200), "gamma", n_boot=0)
    assert fit.identification["labels_at_chance"]
    assert fit_verdict(fit) == "unidentified"


def test_informative_margins_are_not_flagged(tmp_path):
    rng = np.random.default_rng(1)
    gap = np.abs(rng.normal(0, 2, 400))  # |Δ|; the better response is chosen w.p. σ(|Δ|)
    margins = np.where(rng.random(400) < 1 / (1 + np.exp(-gap)), 1, -1) * gap * 1e4
    assert _diagnose(tmp_path, margins) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "strength scale" not in metrics["diagnostics"]


def test_a_text_margin_column_is_one_line(tmp_path, capsys):
    assert _diagnose(tmp_path, ["a", "b", "1.0", "-1.0", "nan"]) == 2
    err = capsys.readouterr().err
    assert "holds text, not margins: 2 row(s), the first row 0 = 'a'" in err
    assert "NaN/inf" not in err


def test_margins_and_population_together_are_refused(tmp_path, capsys):
    assert _diagnose(tmp_path, [1.0, -1.0], f"population={tmp_path}") == 2
    assert "both set; diagnose reads one of them" in capsys.readouterr().err


# ---- item 6: other raw tracebacks ---------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    (b'{"title": "\xff\xfe"}', "not UTF-8 text"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply")], ids=["latin1", "nested"])
def test_report_on_an_unreadable_metrics_file(tmp_path, capsys, content, message):
    (tmp_path / "metrics.json").write_bytes(content)
    assert main(["report", "--output-dir", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_export_of_a_column_mixing_structs_and_scalars(tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "chosen": "a", "rejected": "b",
                                          "extra": {"k": 1} if i % 2 else 5} for i in range(6)])
    with pytest.raises(SchemaError, match="field 'extra': its values mix types"):
        load_preferences(data)
    assert main(["data", "export", f"data={data}", "--output-dir", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("source", [5, None, [{"prompt": "p", "chosen": "a", "rejected": "b"}]],
                         ids=["int", "none", "list"])
def test_load_preferences_of_a_non_path(source):
    with pytest.raises(ConfigError, match="give a file or folder path, a Hub id or a "
                                          "datasets.Dataset"):
        load_preferences(source)


MARGINS = [1.0, -1.0, 2.0, 0.5, -0.3, 0.8]


@pytest.mark.parametrize("scale", [1e-300, 1e300])
def test_fit_strength_on_margins_beyond_float64(scale):
    with pytest.raises(EvaluationError, match="rescale the margins"):
        fit_strength(np.array(MARGINS) * scale, "gamma", n_boot=0)
    fit = fit_strength(np.array(MARGINS) * 1e-90, "gamma", n_boot=0)  # inside: finite
    assert math.isfinite(fit.mean) and math.isfinite(fit.variance)


@pytest.mark.parametrize("n_boot", ["10", -1, 2.5, True])
def test_fit_strength_n_boot_must_be_a_count(n_boot):
    with pytest.raises(EvaluationError, match=f"n_boot={n_boot!r} is invalid"):
        fit_strength(MARGINS, n_boot=n_boot)


# ---- item 7: other silent answers --------------------------------------------------------


@pytest.mark.parametrize("cls", [PreferenceConfig, SFTConfig])
@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_steps", 0, "max_steps=0 is invalid; use a whole number >= 1, or -1"),
    ("max_steps", -3, "max_steps=-3 is invalid"),
    ("save_steps", -5, "save_steps=-5 is invalid"),
    ("logging_steps", 0, "logging_steps=0 is invalid")])
def test_step_counts_are_checked(cls, field, value, message):
    with pytest.raises(ConfigError, match=message):
        cls(output_dir="unused", use_cpu=True, report_to="none", **{field: value})
    cls(output_dir="unused", use_cpu=True, report_to="none", max_steps=-1, save_steps=0.5)


@pytest.mark.parametrize("extra", [{"format": "xml"}, {"options": {"bogus": 1}}])
def test_loader_settings_with_a_synthetic_source_are_refused(extra):
    with pytest.raises(ConfigError, match="is not read with data.source: synthetic"):
        DataConfig(source="synthetic", **extra)


def test_inspect_refuses_a_negative_min_annotators(capsys):
    assert main(["data", "inspect", "data=synthetic", "min_annotators=-1"]) == 2
    assert "min_annotators=-1 is invalid" in capsys.readouterr().err


def test_a_list_attribute_is_refused_not_stringified(tmp_path, capsys):
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "chosen": "a", "rejected": "b",
                                          "attributes": {"langs": ["en", "fr"]}}
                                         for i in range(3)])
    assert main(["data", "inspect", f"data={data}", "by=[langs]"]) == 2
    assert "row 0, field 'attributes': key 'langs' holds a list" in capsys.readouterr().err


def test_an_unknown_attribute_names_the_available_ones(tmp_path):
    data = _jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b",
                                          "attributes": {"age": "30", "gender": "f"}}] * 2)
    with pytest.raises(ConfigError, match=r"\['nosuch'\] not among the data's attributes; "
                                          r"available: \['age', 'gender'\]"):
        load_preferences(data, attributes=["nosuch", "age"])
    kept = load_preferences(data, attributes=["age"])
    assert json.loads(json.dumps(kept[0]["attributes"])) == {"age": "30"}


@pytest.mark.parametrize("variance", [float("nan"), float("inf")])
def test_corrected_dpo_refuses_a_non_finite_variance(variance):
    with pytest.raises(ConfigError, match="pair_variance must be a finite number"):
        corrected_dpo_loss(torch.tensor([1.0, 0.5]), torch.tensor([0.1, variance]), 1.0)


def test_corrected_dpo_counts_a_negative_variance_estimate_as_zero():
    # the documented contract: the unbiased tabular estimate is negative by chance near V = 0
    margin = torch.tensor([1.0, -2.0, 30.0])
    torch.testing.assert_close(corrected_dpo_loss(margin, torch.full((3,), -0.05), 1.0),
                               -F.logsigmoid(0.1 * margin))


@pytest.mark.parametrize("margin", [-40.0, -100.0, -400.0, -1000.0])
def test_corrected_dpo_keeps_a_gradient_for_the_worst_pairs(margin):
    beta, variance = 0.1, 0.2
    x = torch.tensor([margin], dtype=torch.float64, requires_grad=True)
    loss = corrected_dpo_loss(x, torch.tensor([variance], dtype=torch.float64), 1.0, beta)
    loss.sum().backward()
    # the value stays the cap −log(1 − ε) (the raw q = s + α·c is above 1 − ε here) ...
    s = 1 / (1 + math.exp(-beta * margin))
    raw_q = s + 0.5 * (1 - 2 * s) * variance / (s * (1 - s))
    assert raw_q > 1 - CORRECTION_FLOOR
    assert float(loss) == pytest.approx(-math.log1p(-CORRECTION_FLOOR), rel=1e-9)
    # ... and the gradient is DPO's: d/dx −log σ(βx) = −β σ(−βx)
    assert float(x.grad) == pytest.approx(-beta * (1 - s), rel=1e-9)
    dpo = torch.tensor([margin], dtype=torch.float64, requires_grad=True)
    (-F.logsigmoid(beta * dpo)).sum().backward()
    assert float(x.grad) == pytest.approx(float(dpo.grad), rel=1e-9)


def test_a_runaway_strength_is_flagged_and_a_sane_one_is_not():
    # issue 23: LogNormal trained on ±1e4 margins ended at Var β 2e13
    flagged = strength_warnings({"beta_mean": 3.0e3, "beta_var": 2e13})
    assert len(flagged) == 1 and "run away" in flagged[0] and "CV² 2.22e+06" in flagged[0]
    assert strength_warnings({"beta_mean": float("nan"), "beta_var": 1.0})
    assert strength_warnings({"beta_mean": 0.12, "beta_var": 0.12**2 * (math.exp(0.36) - 1)}) \
        == []
    assert strength_warnings({}) == []  # objectives without a strength


def test_every_refusal_here_is_a_pluralign_error():
    assert issubclass(SocialChoiceError, PluralignError)
    assert issubclass(EvaluationError, PluralignError) and issubclass(SchemaError, PluralignError)


@pytest.mark.parametrize("value", [None, 5, ""])
def test_diagnose_compare_needs_a_file_per_name(tmp_path, capsys, value):
    """Found by the CLI fuzz test on a fresh clone: compare: {a: null} ended in a TypeError."""
    (tmp_path / "c.yaml").write_text(json.dumps({"compare": {"a": value}}))
    assert main(["diagnose", "--config", str(tmp_path / "c.yaml"),
                 "--output-dir", str(tmp_path / "out")]) == 2
    assert "compare" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
