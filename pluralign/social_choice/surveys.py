"""Wide survey files (SPSS ``.sav``, Stata ``.dta``, csv, parquet) -> the long respondent table.

The DAHP analysis ([DAHP, §7.1; App. E]) runs on Pew American Trends Panel waves: one row per
respondent, one column per question holding numeric codes with value labels (``1 = "Very
likely"``, ..., ``99 = "Refused"``), a demographic column whose labels define the user types (e.g.
party), and a survey-weight column. :func:`read_survey` turns such a file into the long table
``question, type, answer, weight`` that :func:`~pluralign.social_choice.shares_from_respondents`
reads, plus the declared options and types in value-label order, so options nobody of the
question's respondents chose still get the share floor and the order on the page follows the
questionnaire.

Rules:

* Answers are value labels (``.sav``/``.dta``) or the cell values themselves (csv/parquet, where
  integral numbers print without ``.0``). Codes in ``missing_codes`` (Pew: 98 = "Don't know", 99 =
  "Refused"), SPSS user-missing values and empty cells are dropped, as the paper discards
  "Refused" (App. E); the drops are counted in :attr:`SurveyTable.dropped`.
* Types are the type column's labels in label order, restricted to those some respondent has;
  ``type_missing_codes`` (default none: Pew's "DK/Refused/No lean" stays a type, as in §4.3)
  removes some. Respondents without a type are dropped and counted.
* Options of a labelled question are its value labels in label order minus the missing codes;
  of an unlabelled one, its observed values (numerically sorted where all are numbers).
* A code without a value label, a missing column, no question matching, a type column without
  labels in a labelled file, and a negative, NaN or infinite weight raise
  :class:`~pluralign.social_choice.SocialChoiceError` naming the file, column and (0-based) row;
  so do a file without respondents, without any respondent who has a type, and without any
  valid answer.
* The type and weight columns are never questions (naming one in ``questions`` is an error).
  Without ``weight_column``, a column named like a weight (``weight``, ``WEIGHT_W79``, ``wt``)
  or a numeric column of an unlabelled file with more than :data:`MAX_NUMERIC_OPTIONS` distinct
  non-integral values is refused as a question: it is a weight or a measurement, not a
  multiple-choice answer; name it in ``weight_column`` or pick ``questions``.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pluralign.social_choice.errors import SocialChoiceError
from pluralign.social_choice.shares import QuestionShares, shares_from_respondents

#: Pew ATP codes for "Don't know" (98) and "Refused" (99).
PEW_MISSING_CODES: tuple[float, ...] = (98, 99)
SURVEY_SUFFIXES = (".sav", ".zsav", ".dta", ".csv", ".parquet")
#: ``questions`` strings starting with this are regular expressions (full match), others globs.
REGEX_PREFIX = "re:"
#: A numeric, non-integral column of an unlabelled file with more distinct values than this is
#: not read as a question when the questions are not named (it is a weight or a measurement).
MAX_NUMERIC_OPTIONS = 20
#: Column names that are survey weights (e.g. Pew ``WEIGHT_W79``), matched case-insensitively.
WEIGHT_NAME = re.compile(r"(?i)(.*[_\W])?(weights?|wts?)([_\W].*|\d*)")


@dataclass(frozen=True)
class SurveyTable:
    """A wide survey file in the long form the NBC analysis reads.

    Attributes:
        long: columns ``question``, ``type``, ``answer`` (strings) and ``weight`` (float), one row
            per (respondent, question) with a valid answer.
        options: each question's options in label order (the ``options`` of
            :func:`shares_from_respondents`).
        types: type labels in label order.
        dropped: counts of dropped cells/respondents by reason.
        source: the file read.
    """

    long: pd.DataFrame
    options: dict[str, list[str]]
    types: list[str]
    dropped: dict[str, int] = field(default_factory=dict)
    source: str = "survey"

    def question_shares(self, skip_incomplete: bool = False) -> list[QuestionShares]:
        """Per-question weighted shares with the declared options and types (label order)."""
        return shares_from_respondents(self.long, options=self.options, types=self.types,
                                       skip_incomplete=skip_incomplete, source=self.source)


def _read_frame(path: Path) -> tuple[pd.DataFrame, dict[str, dict[Any, str]] | None]:
    """The raw codes and, for SPSS/Stata, the value labels per column (None: no labels exist)."""
    suffix = path.suffix.lower()
    if suffix not in SURVEY_SUFFIXES:
        raise SocialChoiceError(f"{path}: unsupported survey format {suffix!r}; use one of "
                                f"{', '.join(SURVEY_SUFFIXES)}")
    if not path.is_file():
        raise SocialChoiceError(f"{path}: no such file")
    try:
        if suffix in (".sav", ".zsav", ".dta"):
            import pyreadstat  # optional dependency (extra "surveys")

            reader = pyreadstat.read_dta if suffix == ".dta" else pyreadstat.read_sav
            frame, meta = reader(str(path), apply_value_formats=False, user_missing=False)
            return frame, dict(meta.variable_value_labels)
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""]), None
        return pd.read_parquet(path), None
    except ImportError as exc:
        raise SocialChoiceError(f"{path}: reading {suffix} files needs pyreadstat; install "
                                "pluralign[surveys]") from exc
    except SocialChoiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - the readers raise many unrelated types
        raise SocialChoiceError(f"{path}: cannot read survey file: {exc}") from exc


def _select_questions(columns: Sequence[str], questions: str | Sequence[str] | None,
                      exclude: set[str], labelled: set[str] | None, source: str) -> list[str]:
    candidates = [c for c in columns if c not in exclude]
    if questions is None:
        chosen = [c for c in candidates if labelled is None or c in labelled]
        what = "labelled column" if labelled is not None else "column"
        if not chosen:
            raise SocialChoiceError(f"{source}: no {what} besides the type/weight columns")
        return chosen
    if isinstance(questions, str):
        if questions.startswith(REGEX_PREFIX):
            try:
                pattern = re.compile(questions[len(REGEX_PREFIX):])
            except re.error as exc:
                raise SocialChoiceError(f"{source}: bad questions regex {questions!r}: {exc}") \
                    from exc
            chosen = [c for c in candidates if pattern.fullmatch(c)]
        else:
            chosen = [c for c in candidates if fnmatch.fnmatchcase(c, questions)]
        if not chosen:
            raise SocialChoiceError(f"{source}: no column matches questions={questions!r}; "
                                    f"columns: {list(columns)[:20]}")
        return chosen
    chosen = list(questions)
    roles = [q for q in chosen if q in exclude]
    if roles:
        raise SocialChoiceError(f"{source}: questions names {roles[0]!r}, the type or weight "
                                "column; remove it from questions")
    missing = [q for q in chosen if q not in columns]
    if missing:
        raise SocialChoiceError(f"{source}: no column {missing[0]!r} (questions); columns: "
                                f"{list(columns)[:20]}")
    if not chosen:
        raise SocialChoiceError(f"{source}: questions is an empty list")
    return chosen


def _label(value: Any) -> str:
    """A cell as an option/type label: integral numbers without ``.0``."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _code_key(value: Any) -> Any:
    """Codes compare as numbers where they are numbers (``99``, ``99.0`` and ``"99"`` agree)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return number if math.isfinite(number) else value


def _is_missing(values: pd.Series, codes: set[Any]) -> np.ndarray:
    return (values.isna() | values.map(_code_key).isin(codes)).to_numpy()


def _labels_of(column: pd.Series, labels: dict[Any, str] | None, keep: np.ndarray,
               missing: set[Any], source: str, name: str) -> tuple[np.ndarray, list[str]]:
    """(label per kept row, declared labels in order) for one column."""
    kept = column[keep]
    if labels is None:
        order = sorted({_code_key(v) for v in kept},
                       key=lambda v: (0, v, "") if isinstance(v, float) else (1, 0.0, str(v)))
        # label the code key, so "3.0" in a csv is the option "3" as in the declared order
        return (kept.map(lambda v: _label(_code_key(v))).to_numpy(dtype=object),
                [_label(v) for v in order])
    by_code = {_code_key(code): str(text) for code, text in labels.items()}
    mapped = kept.map(lambda v: by_code.get(_code_key(v)))
    bad = np.flatnonzero(mapped.isna().to_numpy())
    if bad.size:
        row = int(kept.index[bad[0]])
        raise SocialChoiceError(f"{source}: row {row} column {name!r}: code "
                                f"{_label(kept.iloc[bad[0]])!r} has no value label; label it or "
                                "add it to the missing codes")
    declared = list(dict.fromkeys(text for code, text in by_code.items() if code not in missing))
    return mapped.to_numpy(dtype=object), declared


def _weights(frame: pd.DataFrame, column: str | None, source: str) -> np.ndarray:
    if column is None:
        return np.ones(len(frame))
    weight = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(weight) | (weight < 0))
    if bad.size:
        row = int(bad[0])
        raise SocialChoiceError(f"{source}: row {row} column {column!r}: weight "
                                f"{frame[column].iloc[row]!r} must be a finite nonnegative number "
                                f"({bad.size} bad row(s))")
    return weight


def _refuse_weight_like(frame: pd.DataFrame, names: Sequence[str],
                        value_labels: dict[str, dict[Any, str]] | None, source: str) -> None:
    """Refuse a default question list holding a weight-like column (module docstring)."""
    for name in names:
        if value_labels is not None and value_labels.get(name):
            continue
        numbers = pd.to_numeric(frame[name], errors="coerce")
        distinct = numbers.dropna().unique()
        fractional = (distinct != np.round(distinct)).any() if distinct.size else False
        if (WEIGHT_NAME.fullmatch(str(name))
                or (numbers.notna().all() and fractional
                    and distinct.size > MAX_NUMERIC_OPTIONS)):
            raise SocialChoiceError(
                f"{source}: column {name!r} looks like a survey weight or a measurement "
                f"({distinct.size} distinct numeric values), not a question; set "
                f"weight_column={name} or list the questions (questions=[...])")


def read_survey(path: str | os.PathLike[str], type_column: str, *,
                weight_column: str | None = None,
                questions: str | Sequence[str] | None = None,
                missing_codes: Sequence[Any] = PEW_MISSING_CODES,
                type_missing_codes: Sequence[Any] = ()) -> SurveyTable:
    """Read a wide survey file (one row per respondent) into a :class:`SurveyTable`.

    Args:
        path: ``.sav``/``.zsav`` (SPSS), ``.dta`` (Stata), ``.csv`` or ``.parquet``.
        type_column: the column whose labels define the user types (e.g. Pew ``F_PARTYSUM_FINAL``).
        weight_column: survey weights (e.g. ``WEIGHT_W79``); default: every respondent weighs 1.
        questions: question columns: a list of names, a glob (``"EVCAR*_W79"``) or a regular
            expression prefixed with ``re:`` (full match); default: every other column (in
            SPSS/Stata files: every other column with value labels).
        missing_codes: answer codes that are not options (default Pew's 98/99).
        type_missing_codes: type codes that are not types (default none).

    Raises:
        SocialChoiceError: unreadable file or bad input, naming the file, column and row.
    """
    path = Path(path)
    source = str(path)
    frame, value_labels = _read_frame(path)
    for role, column in (("type_column", type_column), ("weight_column", weight_column)):
        if column is not None and column not in frame.columns:
            raise SocialChoiceError(f"{source}: no column {column!r} ({role}); columns: "
                                    f"{list(frame.columns)[:20]}")
    if value_labels is not None and not value_labels.get(type_column):
        raise SocialChoiceError(f"{source}: column {type_column!r} (type_column) has no value "
                                "labels; types need labels (e.g. 1 = 'Rep/Lean Rep')")
    labels_of = (lambda c: None) if value_labels is None else value_labels.get
    weight = _weights(frame, weight_column, source)
    if frame.empty:
        raise SocialChoiceError(f"{source}: no respondents (the file has no rows)")
    names = _select_questions(list(frame.columns), questions,
                              {type_column, weight_column} - {None},
                              None if value_labels is None else set(value_labels), source)
    if questions is None and weight_column is None:
        _refuse_weight_like(frame, names, value_labels, source)
    type_missing = {_code_key(c) for c in type_missing_codes}
    has_type = ~_is_missing(frame[type_column], type_missing)
    type_labels, type_order = _labels_of(frame[type_column], labels_of(type_column), has_type,
                                         type_missing, source, type_column)
    types = [t for t in type_order if t in set(type_labels)]
    if not types:
        raise SocialChoiceError(f"{source}: no respondent has a type in column {type_column!r} "
                                f"(type_column): all {len(frame)} are empty or in "
                                "type_missing_codes; check type_column and type_missing_codes")
    dropped = {"respondents without a type": int((~has_type).sum())}
    rows = np.flatnonzero(has_type)
    missing = {_code_key(c) for c in missing_codes}
    blocks, options = [], {}
    for name in names:
        column = frame[name].iloc[rows]
        keep = ~_is_missing(column, missing)
        dropped[f"{name}: missing or excluded answers"] = int((~keep).sum())
        answers, options[name] = _labels_of(column, labels_of(name), keep, missing, source,
                                            name)
        blocks.append(pd.DataFrame({"question": name, "type": type_labels[keep],
                                    "answer": answers, "weight": weight[rows][keep]}))
    long = pd.concat(blocks, ignore_index=True)
    if long.empty:
        raise SocialChoiceError(f"{source}: no valid answer in questions {names[:5]}: every "
                                "answer is empty or in missing_codes; check questions and "
                                "missing_codes")
    return SurveyTable(long=long, options=options, types=types,
                       dropped={k: v for k, v in dropped.items() if v}, source=source)
