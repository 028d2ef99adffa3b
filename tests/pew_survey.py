"""A Pew American Trends Panel wave in miniature, written by the tests (no real data shipped):
one row per respondent, a party column whose value labels are the types, two coded questions
with "Don't know"/"Refused" codes, and survey weights; plus the same answers as a long table."""

import numpy as np
import pandas as pd

PARTY = {1.0: "Rep/Lean Rep", 2.0: "Dem/Lean Dem", 9.0: "DK/Refused/No lean"}
EVCAR = {1.0: "Very likely", 2.0: "Somewhat likely", 3.0: "Not too likely",
         4.0: "Not at all likely", 99.0: "Refused"}
TRUST = {1.0: "A lot", 2.0: "Some", 3.0: "Not at all", 98.0: "Don't know", 99.0: "Refused"}
N = 400


def pew_frame(seed: int = 0) -> pd.DataFrame:
    """Respondents in the ATP layout: id, party, two coded questions with refusals, weight."""
    rng = np.random.default_rng(seed)
    party = rng.choice([1.0, 2.0, 9.0], size=N, p=[0.45, 0.48, 0.07])
    ev_probs = {1.0: [0.1, 0.2, 0.3, 0.37, 0.03], 2.0: [0.35, 0.3, 0.2, 0.12, 0.03],
                9.0: [0.15, 0.25, 0.3, 0.27, 0.03]}
    evcar = np.array([rng.choice(list(EVCAR), p=ev_probs[p]) for p in party])
    trust = rng.choice(list(TRUST), size=N, p=[0.3, 0.35, 0.25, 0.05, 0.05])
    return pd.DataFrame({"QKEY": np.arange(1000, 1000 + N, dtype=float), "F_PARTY": party,
                         "EVCAR_W79": evcar, "TRUST_W79": trust,
                         "WEIGHT_W79": rng.uniform(0.2, 3.0, size=N)})


def write_pew(path, frame: pd.DataFrame, user_missing_99: bool = True) -> None:
    """Write ``frame`` as an SPSS file with Pew's value labels (needs pyreadstat)."""
    import pyreadstat

    pyreadstat.write_sav(
        frame, str(path),
        variable_value_labels={"F_PARTY": PARTY, "EVCAR_W79": EVCAR, "TRUST_W79": TRUST},
        # SPSS user-missing declaration for one question; the other relies on missing_codes
        missing_ranges={"EVCAR_W79": [99.0]} if user_missing_99 else None)


def reference_long(frame: pd.DataFrame) -> pd.DataFrame:
    """The same answers as a hand-built long table (labels applied, 98/99 dropped)."""
    rows = []
    for question, labels in (("EVCAR_W79", EVCAR), ("TRUST_W79", TRUST)):
        for party, code, weight in zip(frame["F_PARTY"], frame[question], frame["WEIGHT_W79"],
                                       strict=True):
            if code not in (98.0, 99.0):
                rows.append({"question": question, "type": PARTY[party],
                             "answer": labels[code], "weight": weight})
    return pd.DataFrame(rows)
