"""Survey tables -> shares, and the `pluralign nbc` command (run folder, malformed tables)."""

import json

import numpy as np
import pandas as pd
import pytest

from pluralign.cli import main
from pluralign.social_choice import (
    SocialChoiceError,
    shares_from_respondents,
    shares_from_share_table,
)

TYPES = ("Dem", "Neither", "Rep")


def survey(num_questions: int, seed: int = 0) -> pd.DataFrame:
    """Respondent rows: 3 types, 3-5 options, survey weights."""
    rng = np.random.default_rng(seed)
    frames = []
    for q in range(num_questions):
        labels = [chr(65 + i) for i in range(rng.integers(3, 6))]
        for t, n in zip(TYPES, (40, 8, 35), strict=True):
            frames.append(pd.DataFrame({
                "question": f"Q{q}", "type": t,
                "answer": rng.choice(labels, size=n, p=rng.dirichlet(np.ones(len(labels)))),
                "weight": rng.uniform(0.5, 2.0, size=n)}))
    return pd.concat(frames, ignore_index=True)


def test_weighted_shares_match_pandas_pivot():
    table = survey(4)
    got = {q.question: q for q in shares_from_respondents(table)}
    for question, block in table.groupby("question"):
        pivot = block.pivot_table(index="type", columns="answer", values="weight", aggfunc="sum",
                                  fill_value=0.0)
        q = got[question]
        assert q.types == TYPES and q.options == tuple(pivot.columns)
        np.testing.assert_allclose(q.shares, (pivot.T / pivot.sum(axis=1)).T.to_numpy())
        by_type = block.groupby("type")["weight"].sum()
        np.testing.assert_allclose(q.type_probs, (by_type / by_type.sum()).to_numpy())


def test_declared_options_keep_order_and_zero_shares():
    table = pd.DataFrame({"question": ["q"] * 3, "type": ["a", "b", "b"],
                          "answer": ["y", "x", "y"]})
    (q,) = shares_from_respondents(table, options={"q": ["z", "y", "x"]})
    assert q.options == ("z", "y", "x")
    np.testing.assert_allclose(q.shares, [[0, 1, 0], [0, 0.5, 0.5]])
    np.testing.assert_allclose(q.type_probs, [1 / 3, 2 / 3])


def test_shares_table():
    table = pd.DataFrame({"question": ["q"] * 4, "type": ["a", "a", "b", "b"],
                          "option": ["x", "y", "x", "y"], "share": [3, 1, 0, 2],
                          "type_weight": [1, 1, 3, 3]})
    (q,) = shares_from_share_table(table)
    np.testing.assert_allclose(q.shares, [[0.75, 0.25], [0, 1]])
    np.testing.assert_allclose(q.type_probs, [0.25, 0.75])


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.assign(weight=t["weight"].where(t.index != 7, -1.0)), "row 7 field 'weight'"),
    (lambda t: t.assign(answer=t["answer"].where(t.index != 3, "Z")), "row 3 field 'answer'"),
    (lambda t: t[~((t["question"] == "Q1") & (t["type"] == "Neither"))],
     "question 'Q1' has no rows.*'Neither'"),
    (lambda t: t.drop(columns="type"), "missing column"),
])
def test_malformed_tables_get_clear_errors(mutate, message, tmp_path):
    table = survey(3)
    options = {q: sorted(block["answer"].unique()) for q, block in table.groupby("question")}
    with pytest.raises(SocialChoiceError, match=message):
        shares_from_respondents(mutate(table), options=options)


def test_cli_writes_run_folder(tmp_path, capsys):
    table = survey(40, seed=1)
    table.to_csv(tmp_path / "survey.csv", index=False)
    out = tmp_path / "run"
    assert main(["nbc", f"table={tmp_path / 'survey.csv'}", "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    questions = pd.read_csv(out / "questions.csv")
    assert metrics["num_questions"] == 40 == len(questions)
    assert metrics["num_disagree"] == int(questions["disagree"].sum())
    assert {"bump.png", "min_tv_cdf.png", "options.csv", "config.yaml"} <= {
        p.name for p in out.iterdir()}
    assert (questions["dpo_ranking"] == questions["nbc_ranking"]).all()     # Prop. 4.2
    flippable = questions[np.isfinite(questions["min_tv_to_flip"])]
    assert (flippable["flipped_nbc_ranking"] != flippable["nbc_ranking"]).all()
    tv = np.sort(flippable["min_tv_to_flip"].to_numpy())
    assert metrics["min_tv_quantiles"]["q50"] == pytest.approx(np.median(tv))
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 == len(metrics["figures"])
    assert f"on {metrics['num_disagree']} questions" in page
    assert f"{metrics['min_tv_quantiles']['q90']:.3g}" in page
    assert str(questions.sort_values(["disagree", "min_tv_to_flip"], ascending=[False, True])
               ["question"].iloc[0]) in page        # the most sensitive question is tabulated


def test_cli_reports_bad_rows(tmp_path, capsys):
    table = survey(2)
    table.loc[5, "weight"] = -2.0
    table.to_csv(tmp_path / "bad.csv", index=False)
    assert main(["nbc", f"table={tmp_path / 'bad.csv'}", "--output-dir",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "row 5 field 'weight'" in err and "bad.csv" in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_cli_skip_incomplete(tmp_path, capsys):
    table = survey(3)
    table = table[~((table["question"] == "Q2") & (table["type"] == "Rep"))]
    table.to_csv(tmp_path / "s.csv", index=False)
    assert main(["nbc", f"table={tmp_path / 's.csv'}", "--output-dir", str(tmp_path / "r")]) == 2
    assert main(["nbc", f"table={tmp_path / 's.csv'}", "--output-dir", str(tmp_path / "r"),
                 "skip_incomplete=true"]) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["num_questions"] == 2


@pytest.mark.slow
def test_cli_paper_scale_survey(tmp_path, capsys):
    """1,500 questions × 3 types × 3-5 options, as in the paper's Pew analysis."""
    survey(1500, seed=2).to_parquet(tmp_path / "pew.parquet")
    assert main(["nbc", f"table={tmp_path / 'pew.parquet'}", "--output-dir",
                 str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["num_questions"] == 1500
    assert 0 < metrics["num_flippable"] <= 1500


def test_cli_shares_table_and_options_file(tmp_path, capsys):
    shares = pd.DataFrame({"question": ["q1"] * 6, "type": ["a"] * 3 + ["b"] * 3,
                           "option": ["x", "y", "z"] * 2, "share": [0.7, 0.2, 0.1, 0.1, 0.3, 0.6]})
    shares.to_json(tmp_path / "shares.jsonl", orient="records", lines=True)
    assert main(["nbc", f"table={tmp_path / 'shares.jsonl'}", "--output-dir",
                 str(tmp_path / "r1")]) == 0
    options = pd.read_csv(tmp_path / "r1" / "options.csv")
    assert list(options["option"]) == ["x", "y", "z"]
    table = survey(2)
    table.to_csv(tmp_path / "s.csv", index=False)
    pd.DataFrame({"question": ["Q0", "Q0"], "option": ["A", "B"]}).to_csv(tmp_path / "o.csv",
                                                                          index=False)
    assert main(["nbc", f"table={tmp_path / 's.csv'}", "--output-dir", str(tmp_path / "r2"),
                 f"options={tmp_path / 'o.csv'}"]) == 2
    assert "question 'Q1' has no declared options" in capsys.readouterr().err


def _nbc_run(tmp_path, name, *args):
    out = tmp_path / name
    assert main(["nbc", *args, "--output-dir", str(out)]) == 0
    return (out, pd.read_csv(out / "questions.csv").set_index("question"),
            pd.read_csv(out / "options.csv"), json.loads((out / "metrics.json").read_text()))


@pytest.mark.parametrize("user_missing_99", [True, False])
def test_cli_pew_sav_ranks_like_the_long_table(tmp_path, capsys, user_missing_99):
    pytest.importorskip("pyreadstat")
    from pew_survey import pew_frame, reference_long, write_pew

    frame = pew_frame(seed=3)
    write_pew(tmp_path / "w79.sav", frame, user_missing_99)
    reference_long(frame).to_csv(tmp_path / "long.csv", index=False)
    _, wide_q, wide_o, wide_m = _nbc_run(
        tmp_path, "wide", f"table={tmp_path / 'w79.sav'}", "type_column=F_PARTY",
        "weight_column=WEIGHT_W79", 'questions="*_W79"')
    wide_out = capsys.readouterr().out
    _, long_q, long_o, long_m = _nbc_run(tmp_path, "long", f"table={tmp_path / 'long.csv'}")
    assert "note: dropped" not in capsys.readouterr().out and long_m["dropped"] == {}
    assert sorted(wide_q.index) == ["EVCAR_W79", "TRUST_W79"]
    for column in ("avg_reward_ranking", "nbc_ranking", "dpo_ranking", "disagree"):
        assert wide_q[column].to_dict() == long_q[column].to_dict()
    merged = wide_o.merge(long_o, on=["question", "option"], suffixes=("_wide", "_long"))
    assert len(merged) == len(wide_o) == len(long_o)
    for column in ("avg_reward", "nbc_uniform"):
        np.testing.assert_allclose(merged[f"{column}_wide"], merged[f"{column}_long"],
                                   atol=1e-12)
    # refusals (99) and "Don't know" (98) are dropped and counted, independently of the reader
    dropped = {"EVCAR_W79: missing or excluded answers": int((frame["EVCAR_W79"] == 99).sum()),
               "TRUST_W79: missing or excluded answers":
                   int(frame["TRUST_W79"].isin([98, 99]).sum())}
    assert wide_m["dropped"] == dropped and min(dropped.values()) > 0
    evcar = "EVCAR_W79: missing or excluded answers"
    assert f"{evcar} ({dropped[evcar]})" in wide_out
    assert any("dropped" in note for note in wide_m["notes"])


def test_cli_wide_csv_needs_type_column_and_codes_configurable(tmp_path, capsys):
    pytest.importorskip("pyreadstat")
    from pew_survey import PARTY, pew_frame

    frame = pew_frame(seed=4).assign(F_PARTY=lambda f: f["F_PARTY"].map(PARTY))
    frame.to_csv(tmp_path / "wide.csv", index=False)
    _, questions, options, metrics = _nbc_run(
        tmp_path, "r", f"table={tmp_path / 'wide.csv'}", "type_column=F_PARTY",
        "weight_column=WEIGHT_W79", "questions=re:TRUST_W\\d+", "missing_codes=[99]",
        "type_missing_codes=[DK/Refused/No lean]")
    assert list(questions.index) == ["TRUST_W79"]
    assert sorted(options["option"].astype(str)) == ["1", "2", "3", "98"]   # 98 kept as option
    no_type = int((frame["F_PARTY"] == "DK/Refused/No lean").sum())
    assert metrics["dropped"]["respondents without a type"] == no_type > 0


def _nbc_error(tmp_path, capsys, *args):
    assert main(["nbc", *args, "--output-dir", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_cli_wide_survey_errors_are_one_line_exit_2(tmp_path, capsys):
    pytest.importorskip("pyreadstat")
    from pew_survey import pew_frame, write_pew

    write_pew(tmp_path / "w79.sav", pew_frame())
    survey(2).to_csv(tmp_path / "long.csv", index=False)
    sav, long = f"table={tmp_path / 'w79.sav'}", f"table={tmp_path / 'long.csv'}"
    assert "set type_column" in _nbc_error(tmp_path, capsys, sav)
    assert "options applies to long tables only" in _nbc_error(
        tmp_path, capsys, sav, "type_column=F_PARTY", "options=o.csv")
    assert "weight_column applies to wide survey files only" in _nbc_error(
        tmp_path, capsys, long, "weight_column=weight")
    assert "missing_codes must be a list" in _nbc_error(
        tmp_path, capsys, sav, "type_column=F_PARTY", "missing_codes=99")
    err = _nbc_error(tmp_path, capsys, sav, "type_column=PARTY")
    assert "w79.sav" in err and "'PARTY'" in err
    assert not (tmp_path / "bad").exists()
