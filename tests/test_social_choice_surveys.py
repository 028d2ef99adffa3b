"""Wide survey files (Pew ATP layout) -> long table -> the same NBC analysis as long tables."""

import numpy as np
import pytest

pyreadstat = pytest.importorskip("pyreadstat")

from pew_survey import EVCAR, PARTY, TRUST, pew_frame, reference_long, write_pew  # noqa: E402

from pluralign.runs import read_table  # noqa: E402
from pluralign.social_choice import SocialChoiceError, shares_from_respondents  # noqa: E402
from pluralign.social_choice.analysis import analyse  # noqa: E402
from pluralign.social_choice.surveys import read_survey  # noqa: E402


@pytest.mark.parametrize("user_missing_99", [True, False])
def test_sav_gives_same_rankings_as_long_table_path(tmp_path, user_missing_99):
    frame = pew_frame()
    write_pew(tmp_path / "w79.sav", frame, user_missing_99)
    survey = read_survey(tmp_path / "w79.sav", "F_PARTY", weight_column="WEIGHT_W79",
                         questions="*_W79")
    reference_long(frame).to_csv(tmp_path / "long.csv", index=False)
    long_path = shares_from_respondents(read_table(tmp_path / "long.csv"))
    wide_q, wide_o = analyse(survey.question_shares(), 1e-3, 1e-5, "bt", 1.0)
    long_q, long_o = analyse(long_path, 1e-3, 1e-5, "bt", 1.0)
    wide_q, long_q = wide_q.set_index("question"), long_q.set_index("question")
    for column in ("avg_reward_ranking", "nbc_ranking", "dpo_ranking", "disagree"):
        assert wide_q[column].to_dict() == long_q[column].to_dict()
    np.testing.assert_allclose(wide_q["min_tv_to_flip"], long_q["min_tv_to_flip"], rtol=1e-9)
    key = ["question", "option"]
    merged = wide_o.merge(long_o, on=key, suffixes=("_wide", "_long"))
    assert len(merged) == len(wide_o) == len(long_o)
    np.testing.assert_allclose(merged["nbc_uniform_wide"], merged["nbc_uniform_long"], atol=1e-12)
    np.testing.assert_allclose(merged["avg_reward_wide"], merged["avg_reward_long"], atol=1e-12)


def test_labels_order_weights_and_refusals(tmp_path):
    frame = pew_frame(seed=1)
    write_pew(tmp_path / "w79.sav", frame)
    survey = read_survey(tmp_path / "w79.sav", "F_PARTY", weight_column="WEIGHT_W79",
                         questions=["TRUST_W79", "EVCAR_W79"])
    assert survey.types == ["Rep/Lean Rep", "Dem/Lean Dem", "DK/Refused/No lean"]
    assert survey.options["TRUST_W79"] == ["A lot", "Some", "Not at all"]
    assert survey.options["EVCAR_W79"] == ["Very likely", "Somewhat likely", "Not too likely",
                                           "Not at all likely"]
    refused = int(np.isin(frame["TRUST_W79"], [98.0, 99.0]).sum())
    assert survey.dropped["TRUST_W79: missing or excluded answers"] == refused
    (trust,) = [q for q in survey.question_shares() if q.question == "TRUST_W79"]
    # brute force: weighted share of "Some" among Dem respondents who answered
    dem = (frame["F_PARTY"] == 2.0) & ~frame["TRUST_W79"].isin([98.0, 99.0])
    w = frame["WEIGHT_W79"]
    expected = w[dem & (frame["TRUST_W79"] == 2.0)].sum() / w[dem].sum()
    assert trust.shares[1, 1] == pytest.approx(expected, rel=1e-12)
    answered = ~frame["TRUST_W79"].isin([98.0, 99.0])
    assert trust.type_probs[2] == pytest.approx(
        w[answered & (frame["F_PARTY"] == 9.0)].sum() / w[answered].sum(), rel=1e-12)


def test_default_questions_are_the_labelled_columns_and_codes_configurable(tmp_path):
    write_pew(tmp_path / "w79.sav", pew_frame())
    survey = read_survey(tmp_path / "w79.sav", "F_PARTY", missing_codes=[99],
                         type_missing_codes=[9])
    assert set(survey.options) == {"EVCAR_W79", "TRUST_W79"}  # QKEY has no labels
    assert "Don't know" in survey.options["TRUST_W79"]
    assert survey.types == ["Rep/Lean Rep", "Dem/Lean Dem"]
    assert set(survey.long["weight"]) == {1.0}


def test_regex_questions_and_dta(tmp_path):
    frame = pew_frame()
    pyreadstat.write_dta(frame, str(tmp_path / "w79.dta"),
                         variable_value_labels={"F_PARTY": PARTY, "EVCAR_W79": EVCAR,
                                                "TRUST_W79": TRUST})
    survey = read_survey(tmp_path / "w79.dta", "F_PARTY", weight_column="WEIGHT_W79",
                         questions=r"re:EV\w+_W\d+")
    assert list(survey.options) == ["EVCAR_W79"]
    assert len(survey.long) == int((frame["EVCAR_W79"] != 99.0).sum())


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_unlabelled_wide_files(tmp_path, suffix):
    frame = pew_frame().assign(F_PARTY=lambda f: f["F_PARTY"].map(PARTY))
    path = tmp_path / f"w79{suffix}"
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    survey = read_survey(path, "F_PARTY", weight_column="WEIGHT_W79", questions="*_W79")
    assert survey.options["EVCAR_W79"] == ["1", "2", "3", "4"]
    assert survey.types == sorted(PARTY.values())
    assert len(survey.long) == len(reference_long(pew_frame()))
    # pandas writes the codes as "3.0": answers and declared options must agree on "3"
    assert set(survey.long["answer"]) <= {"1", "2", "3", "4", "98"}
    assert {q.question for q in survey.question_shares()} == {"EVCAR_W79", "TRUST_W79"}


def _bad(tmp_path, frame=None, labels=None, **kwargs):
    frame = pew_frame() if frame is None else frame
    path = tmp_path / "bad.sav"
    pyreadstat.write_sav(frame, str(path), variable_value_labels=labels if labels is not None
                         else {"F_PARTY": PARTY, "EVCAR_W79": EVCAR, "TRUST_W79": TRUST})
    options = {"type_column": "F_PARTY", "weight_column": "WEIGHT_W79"} | kwargs
    with pytest.raises(SocialChoiceError) as info:
        read_survey(path, **options)
    assert "bad.sav" in str(info.value)
    return str(info.value)


def test_bad_inputs_name_file_column_and_row(tmp_path):
    assert "'PARTY'" in _bad(tmp_path, type_column="PARTY")
    assert "'WEIGHT'" in _bad(tmp_path, weight_column="WEIGHT")
    assert "no column matches" in _bad(tmp_path, questions="NOPE*")
    assert "'MISSING_Q'" in _bad(tmp_path, questions=["EVCAR_W79", "MISSING_Q"])
    message = _bad(tmp_path, labels={"EVCAR_W79": EVCAR, "TRUST_W79": TRUST})
    assert "'F_PARTY'" in message and "no value labels" in message
    for bad_weight in (-1.0, np.nan):
        frame = pew_frame()
        frame.loc[17, "WEIGHT_W79"] = bad_weight
        message = _bad(tmp_path, frame=frame)
        assert "row 17" in message and "'WEIGHT_W79'" in message
    frame = pew_frame()
    frame.loc[5, "TRUST_W79"] = 7.0
    message = _bad(tmp_path, frame=frame)
    assert "row 5" in message and "'TRUST_W79'" in message and "no value label" in message
    with pytest.raises(SocialChoiceError, match="no such file"):
        read_survey(tmp_path / "absent.sav", "F_PARTY")
    with pytest.raises(SocialChoiceError, match="unsupported survey format"):
        read_survey(tmp_path / "w.xlsx", "F_PARTY")
