"""The survey analysis behind ``pluralign nbc``: average reward vs normalized Borda count per
question, DPO's infinite-data ranking, and the smallest change of the comparison distribution
(min TV) that flips NBC ([DAHP, §4]). :func:`run_analysis` writes the run folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pluralign.runs import (
    RunFolderOptions,
    plain,
    read_table,
    write_config,
    write_report,
    write_table,
)
from pluralign.social_choice.borda import (
    LINKS,
    average_reward,
    dpo_limit,
    normalized_borda,
    ranking,
)
from pluralign.social_choice.errors import SocialChoiceError
from pluralign.social_choice.plots import plot_bump, plot_min_tv_cdf
from pluralign.social_choice.sensitivity import sensitivity
from pluralign.social_choice.shares import (
    DEFAULT_SHARE_FLOOR,
    QuestionShares,
    luce_shepard_rewards,
    shares_from_respondents,
    shares_from_share_table,
)
from pluralign.social_choice.surveys import PEW_MISSING_CODES, read_survey
from pluralign.validation import NON_NEGATIVE, OPEN_UNIT, POSITIVE, check_fields, check_names

#: suffixes that are always wide survey files (one row per respondent, value labels).
WIDE_SUFFIXES = (".sav", ".zsav", ".dta")
#: settings of wide survey files only, with their defaults.
WIDE_DEFAULTS: dict[str, Any] = {"weight_column": None, "questions": None,
                                 "missing_codes": list(PEW_MISSING_CODES),
                                 "type_missing_codes": []}

#: min-TV quantiles reported in metrics.json and the report.
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
#: questions listed in the report's table.
TABLE_ROWS = 15


@dataclass
class NBCConfig(RunFolderOptions):
    """``pluralign nbc``: normalized Borda count vs average reward on a survey.

    Attributes:
        table: respondent-level table (question, type, answer[, weight]) or shares table
            (question, type, option, share[, type_weight]); csv, parquet or jsonl by suffix. Or
            a wide survey file, one row per respondent and one column per question (Pew ATP
            waves): .sav/.zsav/.dta always, csv/parquet when type_column is set.
        options: csv with columns question, option declaring each question's options in order
            (long tables only; wide files declare options by value labels).
        types: declared type labels (default: all seen; long tables only).
        type_column: wide files: the column whose value labels are the types (e.g. F_PARTYSUM).
        weight_column: wide files: the survey-weight column (default: every respondent 1).
        questions: wide files: the question columns, a list of names, a glob ("*_W79") or a
            regular expression "re:EVCAR.*" (full match); default: every other labelled column.
        missing_codes: wide files: answer codes that are not options (Pew 98 = Don't know,
            99 = Refused); SPSS user-missing values and empty cells are dropped too.
        type_missing_codes: wide files: type codes that are not types (default none).
        skip_incomplete: skip questions where a type has no rows instead of failing.
        floor: smallest share used for Luce-Shepard rewards.
        eps: minimum sampling probability kept for every option.
        link: annotator link (bt or thurstone).
        temperature: link temperature.
        question: question drawn in bump.png (default: the most sensitive question where
            average reward and NBC disagree).
        output_dir: run folder.
    """

    table: str | None = None
    options: str | None = None
    types: list[str] | None = None
    type_column: str | None = None
    weight_column: str | None = None
    questions: str | list[str] | None = None
    missing_codes: list[Any] = field(default_factory=lambda: list(PEW_MISSING_CODES))
    type_missing_codes: list[Any] = field(default_factory=list)
    skip_incomplete: bool = False
    floor: float = DEFAULT_SHARE_FLOOR
    eps: float = 1e-5
    link: str = "bt"
    temperature: float = 1.0
    question: str | None = None
    output_dir: str | None = None

    def __post_init__(self) -> None:
        if self.table is None or self.output_dir is None:
            raise SocialChoiceError("nbc needs table=FILE and --output-dir DIR")
        if self.link not in LINKS:
            raise SocialChoiceError(f"link={self.link!r} is unknown; use one of "
                                    f"{', '.join(LINKS)}")
        check_fields(self, {"floor": OPEN_UNIT,
                            "eps": NON_NEGATIVE, "temperature": POSITIVE})
        kinds = {"table": "file path", "options": "file path", "question": "question id",
                 "type_column": "column name", "weight_column": "column name"}
        for name, kind in kinds.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise SocialChoiceError(f"NBCConfig.{name}={value!r} is invalid; use a {kind}")
        if not isinstance(self.skip_incomplete, bool):
            raise SocialChoiceError(f"NBCConfig.skip_incomplete={self.skip_incomplete!r} is "
                                    "invalid; use true or false")
        if self.types is not None:
            self.types = check_names(self.types, "NBCConfig.types", SocialChoiceError)
        for name in ("missing_codes", "type_missing_codes"):
            if not isinstance(getattr(self, name), list):
                raise SocialChoiceError(f"{name} must be a list of codes, e.g. {name}=[98, 99]; "
                                        f"got {getattr(self, name)!r}")
        if not (self.questions is None or isinstance(self.questions, str)
                or (isinstance(self.questions, list)
                    and all(isinstance(q, str) for q in self.questions))):
            raise SocialChoiceError("questions must be a list of column names, a glob or "
                                    f"'re:REGEX'; got {self.questions!r}")
        if self.wide:
            if self.type_column is None:
                raise SocialChoiceError(f"{self.table} is a wide survey file: set type_column="
                                        "COLUMN (the column whose labels are the types)")
            for name in ("options", "types"):
                if getattr(self, name) is not None:
                    raise SocialChoiceError(f"{name} applies to long tables only, not to the wide "
                                            f"survey file {self.table} (type_column="
                                            f"{self.type_column}); it declares them by labels")
        else:
            for name, default in WIDE_DEFAULTS.items():
                if getattr(self, name) != default:
                    raise SocialChoiceError(f"{name} applies to wide survey files only; set "
                                            f"type_column=COLUMN to read {self.table} as one")

    @property
    def wide(self) -> bool:
        """Whether ``table`` is read as a wide survey file (:func:`read_survey`)."""
        return self.type_column is not None or Path(self.table).suffix.lower() in WIDE_SUFFIXES


def read_options(path: str | Path) -> dict[str, list[str]]:
    """Declared options: a csv with columns question, option (row order = option order)."""
    frame = read_table(path)
    if not {"question", "option"} <= set(frame.columns):
        raise SocialChoiceError(f"{path}: needs columns question, option")
    frame = frame.astype({"question": str, "option": str})
    return {q: list(block["option"]) for q, block in frame.groupby("question", sort=False)}


def load_questions(config: NBCConfig) -> tuple[list[QuestionShares], dict[str, int]]:
    """Parse the input into per-question shares (wide survey, respondent or shares format) and
    the counts of what a wide file dropped by reason (refusals, respondents without a type)."""
    if config.wide:
        survey = read_survey(config.table, config.type_column,
                             weight_column=config.weight_column, questions=config.questions,
                             missing_codes=config.missing_codes,
                             type_missing_codes=config.type_missing_codes)
        return survey.question_shares(config.skip_incomplete), survey.dropped
    table = read_table(config.table)
    source = str(config.table)
    if "share" in table.columns:
        return shares_from_share_table(table, source=source), {}
    options = read_options(config.options) if config.options else None
    return shares_from_respondents(table, options=options, types=config.types,
                                   skip_incomplete=config.skip_incomplete, source=source), {}


def analyse(questions: list[QuestionShares], floor: float, eps: float, link: str,
            temperature: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-question and per-option tables; questions are batched by (types, options) shape."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, q in enumerate(questions):
        groups.setdefault(q.shares.shape, []).append(i)
    question_rows: list[dict] = [{} for _ in questions]
    option_rows: list[pd.DataFrame] = []
    for indices in groups.values():
        batch = [questions[i] for i in indices]
        rewards = luce_shepard_rewards(np.stack([q.shares for q in batch]), floor=floor)
        type_probs = np.stack([q.type_probs for q in batch])
        avg = average_reward(rewards, type_probs)
        result = sensitivity(rewards, type_probs, eps=eps, link=link, temperature=temperature)
        flipped = np.full_like(result.nbc, np.nan)
        ok = np.isfinite(result.min_tv)
        if ok.any():
            flipped[ok] = normalized_borda(rewards[ok], type_probs[ok], result.flip_probs[ok],
                                           link=link, temperature=temperature)
        dpo = dpo_limit(rewards, type_probs, link=link, temperature=temperature)
        avg_rank, nbc_rank, dpo_rank = ranking(avg), ranking(result.nbc), ranking(dpo)
        for j, (i, q) in enumerate(zip(indices, batch, strict=True)):
            labels = np.asarray(q.options)
            question_rows[i] = {
                "question": q.question,
                "num_options": len(labels),
                "avg_reward_ranking": " > ".join(labels[avg_rank[j]]),
                "nbc_ranking": " > ".join(labels[nbc_rank[j]]),
                "dpo_ranking": " > ".join(labels[dpo_rank[j]]),
                "disagree": bool(np.any(avg_rank[j] != nbc_rank[j])),
                "top_disagree": bool(avg_rank[j, 0] != nbc_rank[j, 0]),
                "min_tv_to_flip": float(result.min_tv[j]),
                "flip_better": labels[result.flip_pair[j, 0]] if ok[j] else None,
                "flip_worse": labels[result.flip_pair[j, 1]] if ok[j] else None,
                "flipped_nbc_ranking": (" > ".join(labels[ranking(flipped[j])]) if ok[j]
                                        else None),
            }
            option_rows.append(pd.DataFrame({
                "question": q.question, "option": labels, "avg_reward": avg[j],
                "nbc_uniform": result.nbc[j], "dpo_limit": dpo[j], "nbc_flipped": flipped[j],
                "flip_alt_prob": result.flip_probs[j],
            }))
    options = pd.concat(option_rows, ignore_index=True) if option_rows else pd.DataFrame()
    return pd.DataFrame(question_rows), options


def run_analysis(config: NBCConfig) -> dict[str, Any]:
    """Run the analysis and write the run folder; return the metrics."""
    questions, dropped = load_questions(config)
    if not questions:
        raise SocialChoiceError(f"{config.table}: no question left to analyse")
    too_small = [q.question for q in questions if len(q.options) < 2]
    if too_small:
        raise SocialChoiceError(f"{config.table}: question {too_small[0]!r} has fewer than two "
                                "options; declare its options with options=FILE or drop it")
    per_question, per_option = analyse(questions, config.floor, config.eps, config.link,
                                       config.temperature)
    out = Path(config.output_dir)
    write_config(out, config)
    write_table(out, "questions.csv", per_question)
    write_table(out, "options.csv", per_option)
    if dropped:
        print(f"note: {dropped_note(dropped)}")
    plot_min_tv_cdf(per_question["min_tv_to_flip"].to_numpy(), out / "min_tv_cdf.png")
    shown = _pick_question(per_question, config.question)
    plot_bump(per_option[per_option["question"] == shown], shown, out / "bump.png")
    metrics = nbc_metrics(per_question, shown, str(config.table), dropped)
    write_report(out, metrics)
    print(f"{metrics['num_questions']} questions: average reward and NBC disagree on "
          f"{metrics['num_disagree']} (top choice on {metrics['num_top_disagree']}); median min "
          f"TV to change the NBC ranking {metrics['median_min_tv_to_flip']}; wrote {out}")
    return metrics


def dropped_note(dropped: dict[str, int]) -> str:
    """One line saying what a wide survey file lost, by reason."""
    return "dropped " + "; ".join(f"{reason} ({n})" for reason, n in dropped.items())


def nbc_metrics(per_question: pd.DataFrame, shown: str, source: str,
                dropped: dict[str, int] | None = None) -> dict[str, Any]:
    """``metrics.json`` of a run: counts, min-TV quantiles, what a wide survey file dropped
    (``dropped``: reason -> count), and what :mod:`report` renders."""
    min_tv = per_question["min_tv_to_flip"].to_numpy(dtype=float)
    finite = min_tv[np.isfinite(min_tv)]
    quantiles = ({f"q{int(100 * q):02d}": float(np.quantile(finite, q)) for q in QUANTILES}
                 if finite.size else {})
    n = len(per_question)
    metrics: dict[str, Any] = {
        "num_questions": n,
        "num_disagree": int(per_question["disagree"].sum()),
        "frac_disagree": float(per_question["disagree"].mean()),
        "num_top_disagree": int(per_question["top_disagree"].sum()),
        "num_flippable": int(finite.size),
        "median_min_tv_to_flip": quantiles.get("q50"),
        "min_tv_quantiles": quantiles,
        "dropped": dict(dropped or {}),
    }
    tv_text = (", ".join(f"{k[1:]}%: {v:.3g}" for k, v in quantiles.items()) if quantiles
               else "no question's NBC ranking can be changed")
    summary = [
        f"{n} questions from {source}.",
        f"Average reward and NBC (uniform alternatives) rank the options differently on "
        f"{metrics['num_disagree']} questions ({100 * metrics['frac_disagree']:.1f}%); the top "
        f"choice differs on {metrics['num_top_disagree']} "
        f"({100 * metrics['num_top_disagree'] / n:.1f}%).",
        f"{metrics['num_flippable']} questions ({100 * metrics['num_flippable'] / n:.1f}%) have "
        "an alternatives' sampling distribution that changes the NBC ranking.",
        f"Min TV from uniform to change the NBC ranking, quantiles over those questions: "
        f"{tv_text}.",
    ]
    top = per_question.sort_values(["disagree", "min_tv_to_flip"], ascending=[False, True])
    columns = ["question", "avg_reward_ranking", "nbc_ranking", "disagree", "min_tv_to_flip",
               "flipped_nbc_ranking"]
    rows = [[_cell(v) for v in row] for row in top[columns].head(TABLE_ROWS).to_numpy()]
    metrics |= {
        "title": "pluralign nbc: average reward vs normalized Borda count",
        "summary": summary,
        "tables": [{"title": f"Most sensitive questions (first {len(rows)} of {n}: "
                             "disagreeing first, then by min TV)",
                    "columns": columns, "rows": rows}],
        "figures": [
            {"file": "bump.png", "caption": f"Question {shown}: option ranks by average "
             "reward, by NBC under uniform alternatives and under the smallest-TV flipping "
             "distribution ([DAHP, Fig. 1])"},
            {"file": "min_tv_cdf.png", "caption": "CDF over questions of the min TV change of "
             "the alternatives' distribution that changes the NBC ranking ([DAHP, Fig. 2])"},
        ],
        "notes": ["questions.csv and options.csv hold every question and option; "
                  "NBC ranks like DPO's infinite-data optimum (dpo_ranking, Prop. 4.2)."]
        + ([dropped_note(dropped)] if dropped else []),
    }
    return metrics


def _cell(value: Any) -> Any:
    """A JSON-safe table cell: numpy scalars to Python, NaN/inf (nothing flips) to None."""
    value = plain(value)
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _pick_question(per_question: pd.DataFrame, wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in set(per_question["question"]):
            raise SocialChoiceError(f"question={wanted!r} is not in the table")
        return wanted
    ranked = per_question.sort_values(["disagree", "min_tv_to_flip"], ascending=[False, True])
    return str(ranked["question"].iloc[0])
