"""Property test over bad option values for stable commands (issue 15): exit 0 or 2, never a
traceback. The helpers live in cli_fuzz.py so other CLI tests can reuse them."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cli_fuzz import CLI_SETTINGS, assert_clean, number_texts, yaml_values
from hypothesis import given
from hypothesis import strategies as st

PRISM = Path(__file__).parent / "fixtures" / "prism"


@CLI_SETTINGS
@given(key=st.sampled_from(["pairs", "min_score_gap", "chat"]), value=yaml_values())
def test_data_inspect_prism_options(key, value):
    """With pairs=by_score, so that min_score_gap is used (before the fix: "TypeError: '<=' not
    supported between instances of 'int' and 'str'" for min_score_gap=abc)."""
    pairing = [] if key == "pairs" else ["--option", "pairs=by_score"]
    assert_clean(["data", "inspect", str(PRISM), "--examples", "0", *pairing,
                  "--option", f"{key}={value}"])


@CLI_SETTINGS
@given(flag=st.sampled_from(["--limit", "--min-pairs", "--min-annotators", "--examples"]),
       value=number_texts())
def test_data_inspect_numeric_flags(flag, value):
    assert_clean(["data", "inspect", str(PRISM), f"{flag}={value}"])


@pytest.fixture(scope="module")
def survey_csv(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    rows = [{"question": f"Q{q}", "type": t, "answer": rng.choice(["A", "B", "C"]),
             "weight": 1.0} for q in range(2) for t in ("Dem", "Rep") for _ in range(20)]
    path = tmp_path_factory.mktemp("nbc") / "survey.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@CLI_SETTINGS
@given(flag=st.sampled_from(["--floor", "--eps", "--temperature"]), value=number_texts())
def test_nbc_numeric_flags(survey_csv, tmp_path_factory, flag, value):
    out = tmp_path_factory.mktemp("run")
    assert_clean(["nbc", str(survey_csv), "--out", str(out), f"{flag}={value}"])
