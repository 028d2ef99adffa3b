"""``pluralign nbc``: average reward vs normalized Borda count on survey tables (seeds/003 §7.1).

For every question: per-type Luce–Shepard rewards from the choice shares (Eq. 27), the ranking by
user-weighted average reward, by NBC under uniform alternatives and by DPO's infinite-data optimum
(which ranks like NBC, Prop. 4.2), whether average reward and NBC disagree, and the smallest TV
change of the alternatives' distribution that changes the NBC ranking (App. E LP).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pluralign.evaluation.report import write_report
from pluralign.io import atomic_path, write_text
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

#: min-TV quantiles reported in metrics.json and the report.
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
#: questions listed in the report's table.
TABLE_ROWS = 15

EPILOG = """\
Examples:
  pluralign nbc survey.csv --out runs/pew_nbc
  pluralign nbc survey.parquet --out runs/pew_nbc --options options.csv --skip-incomplete
  pluralign nbc shares.csv --out runs/shares_nbc --question Q17 --eps 1e-5

TABLE is either respondent-level (columns question, type, answer and optionally weight) or a
shares table (columns question, type, option, share and optionally type_weight); csv, parquet
and jsonl are read by suffix. --options is a csv with columns question, option that declares
every question's options in order (answers outside it are errors; options nobody chose get the
share floor). The run folder gets config.yaml, metrics.json, questions.csv (rankings by average
reward, NBC and DPO's infinite-data optimum, disagreement, min TV to flip), options.csv
(per-option average reward, NBC before/after the flip, DPO's induced reward),
bump.png (Fig. 1), min_tv_cdf.png (Fig. 2) and report.html (all of it on one page;
`pluralign report RUN` rebuilds it).
"""


def add_nbc_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pluralign nbc``."""
    parser.epilog = EPILOG
    parser.add_argument("table", type=Path, help="respondent-level or shares table")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    parser.add_argument("--options", type=Path, help="csv declaring each question's options")
    parser.add_argument("--types", help="comma-separated declared type labels (default: all seen)")
    parser.add_argument("--skip-incomplete", action="store_true",
                        help="skip questions where a type has no rows instead of failing")
    parser.add_argument("--floor", type=float, default=DEFAULT_SHARE_FLOOR,
                        help="smallest share used for Luce-Shepard rewards (default 1e-3)")
    parser.add_argument("--eps", type=float, default=1e-5,
                        help="minimum sampling probability kept for every option (default 1e-5)")
    parser.add_argument("--link", choices=LINKS, default="bt", help="annotator link (default bt)")
    parser.add_argument("--temperature", type=float, default=1.0, help="link temperature")
    parser.add_argument("--question", help="question drawn in bump.png (default: the most "
                        "sensitive question where average reward and NBC disagree)")


def read_table(path: Path) -> pd.DataFrame:
    """Read csv / parquet / jsonl by suffix; errors name the file."""
    suffix = path.suffix.lower()
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet,
               ".jsonl": lambda p: pd.read_json(p, lines=True)}
    if suffix not in readers:
        raise SocialChoiceError(f"{path}: unsupported table format {suffix!r}; use .csv, "
                                ".parquet or .jsonl")
    if not path.is_file():
        raise SocialChoiceError(f"{path}: no such file")
    try:
        return readers[suffix](path)
    except (ValueError, OSError) as exc:
        raise SocialChoiceError(f"{path}: cannot read table: {exc}") from exc


def read_options(path: Path) -> dict[str, list[str]]:
    """Declared options: a csv with columns question, option (row order = option order)."""
    frame = read_table(path)
    if not {"question", "option"} <= set(frame.columns):
        raise SocialChoiceError(f"{path}: needs columns question, option")
    frame = frame.astype({"question": str, "option": str})
    return {q: list(block["option"]) for q, block in frame.groupby("question", sort=False)}


def load_questions(args: argparse.Namespace) -> list[QuestionShares]:
    """Parse the input table into per-question shares (respondent or shares format)."""
    table = read_table(args.table)
    source = str(args.table)
    if "share" in table.columns:
        return shares_from_share_table(table, source=source)
    options = read_options(args.options) if args.options else None
    types = [t.strip() for t in args.types.split(",")] if args.types else None
    return shares_from_respondents(table, options=options, types=types,
                                   skip_incomplete=args.skip_incomplete, source=source)


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


def run_nbc(args: argparse.Namespace) -> int:
    """Run the analysis and write the run folder."""
    questions = load_questions(args)
    if not questions:
        raise SocialChoiceError(f"{args.table}: no question left to analyse")
    too_small = [q.question for q in questions if len(q.options) < 2]
    if too_small:
        raise SocialChoiceError(f"{args.table}: question {too_small[0]!r} has fewer than two "
                                "options; declare its options with --options or drop it")
    per_question, per_option = analyse(questions, args.floor, args.eps, args.link,
                                       args.temperature)
    out = Path(args.out)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
              if k not in ("command",)}
    write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=True))
    for name, frame in (("questions.csv", per_question), ("options.csv", per_option)):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False)
    plot_min_tv_cdf(per_question["min_tv_to_flip"].to_numpy(), out / "min_tv_cdf.png")
    shown = _pick_question(per_question, args.question)
    plot_bump(per_option[per_option["question"] == shown], shown, out / "bump.png")
    metrics = nbc_metrics(per_question, shown, str(args.table))
    write_report(out, metrics)
    print(f"{metrics['num_questions']} questions: average reward and NBC disagree on "
          f"{metrics['num_disagree']} (top choice on {metrics['num_top_disagree']}); median min "
          f"TV to change the NBC ranking {metrics['median_min_tv_to_flip']}; wrote {out}")
    return 0


def nbc_metrics(per_question: pd.DataFrame, shown: str, source: str) -> dict[str, Any]:
    """``metrics.json`` of a run: counts, min-TV quantiles, and what :mod:`report` renders."""
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
             "distribution (seeds/003 Fig. 1)"},
            {"file": "min_tv_cdf.png", "caption": "CDF over questions of the min TV change of "
             "the alternatives' distribution that changes the NBC ranking (seeds/003 Fig. 2)"},
        ],
        "notes": ["questions.csv and options.csv hold every question and option; "
                  "NBC ranks like DPO's infinite-data optimum (dpo_ranking, Prop. 4.2)."],
    }
    return metrics


def _cell(value: Any) -> Any:
    """A JSON-safe table cell: numpy scalars to Python, NaN/inf (nothing flips) to None."""
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and not np.isfinite(value) else value


def _pick_question(per_question: pd.DataFrame, wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in set(per_question["question"]):
            raise SocialChoiceError(f"--question {wanted!r} is not in the table")
        return wanted
    ranked = per_question.sort_values(["disagree", "min_tv_to_flip"], ascending=[False, True])
    return str(ranked["question"].iloc[0])
