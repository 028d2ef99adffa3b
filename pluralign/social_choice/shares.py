"""From survey answers to per-type choice shares and Luce–Shepard rewards ([DAHP, App. E])."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from pluralign.social_choice.errors import SocialChoiceError

DEFAULT_SHARE_FLOOR = 1e-3


def luce_shepard_rewards(shares: np.ndarray, floor: float = DEFAULT_SHARE_FLOOR) -> np.ndarray:
    """Per-type rewards that explain observed choice shares ([DAHP, Eq. 27]).

    The Luce–Shepard choice model says type ``u`` picks option ``a`` among the options ``O`` with
    probability ``p_u(a) = exp r_u(a) / Σ_{b∈O} exp r_u(b)``, so rewards are identified up to a
    per-type constant; we fix it by centring: ``r_u(a) = log p_u(a) − mean_{b∈O} log p_u(b)``.

    A share of exactly zero would give ``r = −∞``. Each row is first normalised to sum to one,
    then every share is raised to at least ``floor`` and the row renormalised, so an option no
    respondent of a type chose gets reward ``≈ log(floor)`` below the row's typical option
    (``floor = 1e-3``: "fewer than one in a thousand respondents"). Rows without positive
    mass are an error.

    Args:
        shares: ``[..., type, option]`` nonnegative shares or (weighted) counts.
        floor: smallest share used, in ``(0, 1/num_options)``.

    Returns:
        ``[..., type, option]`` rewards, each row with zero mean.
    """
    shares = np.asarray(shares, dtype=float)
    num_options = shares.shape[-1]
    if not 0 < floor < 1.0 / num_options:
        raise SocialChoiceError(f"floor must be in (0, 1/{num_options}), got {floor}")
    if not np.all(np.isfinite(shares)) or np.any(shares < 0):
        raise SocialChoiceError("shares must be finite and nonnegative")
    total = shares.sum(axis=-1, keepdims=True)
    if np.any(total <= 0):
        raise SocialChoiceError("a type has no positive share on any option (an empty row)")
    probs = np.maximum(shares / total, floor)
    log_p = np.log(probs / probs.sum(axis=-1, keepdims=True))
    return log_p - log_p.mean(axis=-1, keepdims=True)


@dataclass(frozen=True)
class QuestionShares:
    """Choice shares of one survey question.

    Attributes:
        question: the question's identifier.
        options: option labels, in the order of the last axis of ``shares``.
        types: type labels, in the order of the first axis of ``shares``.
        shares: ``[type, option]`` weighted share of each type's respondents choosing each option.
        type_probs: ``[type]`` weighted share of the question's respondents in each type.
    """

    question: str
    options: tuple[str, ...]
    types: tuple[str, ...]
    shares: np.ndarray
    type_probs: np.ndarray


def shares_from_respondents(
    table: pd.DataFrame,
    options: dict[str, list[str]] | None = None,
    types: list[str] | None = None,
    skip_incomplete: bool = False,
    source: str = "table",
) -> list[QuestionShares]:
    """Weighted per-type shares from a respondent-level table.

    Columns: ``question``, ``type``, ``answer`` and optionally ``weight`` (survey weight,
    default 1). For question ``q``, ``shares[u, a] = Σ w·[type=u, answer=a] / Σ w·[type=u]`` and
    ``type_probs[u] = Σ w·[type=u] / Σ w`` (both over the question's rows).

    Args:
        table: the respondent rows.
        options: optional declared option labels per question (their order is kept); an answer
            outside them is an error. Without it, a question's options are its observed answers.
        types: optional declared type labels; default: every type in the table.
        skip_incomplete: drop (instead of raising on) questions where a type has no rows.
        source: name of the table for error messages.
    """
    missing = {"question", "type", "answer"} - set(table.columns)
    if missing:
        raise SocialChoiceError(
            f"{source}: missing column(s) {sorted(missing)}; a respondent table needs "
            "question, type, answer (and optionally weight)"
        )
    frame = table[["question", "type", "answer"]].astype(str)
    weight = _weights(table, source)
    frame = frame.assign(weight=weight)
    all_types = sorted(frame["type"].unique()) if types is None else list(types)
    unknown_types = sorted(set(frame["type"]) - set(all_types))
    if unknown_types:
        row = int(np.flatnonzero(frame["type"].isin(unknown_types))[0])
        raise SocialChoiceError(
            f"{source}: row {row} field 'type' has unknown type {frame['type'].iloc[row]!r}; "
            f"declared types: {all_types}"
        )
    if options is not None:
        _check_declared_options(frame, options, source)
        labels_of = {q: tuple(map(str, labels)) for q, labels in options.items()}
    else:
        seen = frame[["question", "answer"]].drop_duplicates().sort_values(["question", "answer"])
        labels_of = {q: tuple(block) for q, block in seen.groupby("question", sort=False)["answer"]}
    q_codes, questions = pd.factorize(frame["question"], sort=False)
    type_index = {t: i for i, t in enumerate(all_types)}
    t_codes = frame["type"].map(type_index).to_numpy()
    option_index = pd.Series({(q, a): i for q in questions for i, a in enumerate(labels_of[q])})
    o_codes = option_index.reindex(pd.MultiIndex.from_arrays([frame["question"],
                                                              frame["answer"]])).to_numpy()
    num_types = len(all_types)
    max_options = max(len(labels_of[q]) for q in questions)
    key = (q_codes * num_types + t_codes) * max_options + o_codes.astype(np.int64)
    sums = np.bincount(key, weights=frame["weight"].to_numpy(),
                       minlength=len(questions) * num_types * max_options)
    sums = sums.reshape(len(questions), num_types, max_options)
    result = []
    for i, question in enumerate(questions):
        counts = sums[i, :, :len(labels_of[question])]
        per_type = counts.sum(axis=1)
        if np.any(per_type <= 0):
            empty = [t for t, n in zip(all_types, per_type, strict=True) if n <= 0]
            if skip_incomplete:
                continue
            raise SocialChoiceError(
                f"{source}: question {question!r} has no rows with positive weight for type(s) "
                f"{empty}; drop those rows/types or pass --skip-incomplete to skip such questions"
            )
        result.append(QuestionShares(
            question=str(question), options=labels_of[question], types=tuple(all_types),
            shares=counts / per_type[:, None], type_probs=per_type / per_type.sum(),
        ))
    return result


def shares_from_share_table(table: pd.DataFrame, source: str = "table") -> list[QuestionShares]:
    """Questions from a shares table with columns ``question``, ``type``, ``option``, ``share``.

    An optional ``type_weight`` column gives each type's population weight in the question
    (normalised per question; default: equal weights). Missing (type, option) cells are an
    error, because a zero share and a forgotten row cannot be told apart.
    """
    missing = {"question", "type", "option", "share"} - set(table.columns)
    if missing:
        raise SocialChoiceError(
            f"{source}: missing column(s) {sorted(missing)}; a shares table needs "
            "question, type, option, share (and optionally type_weight)"
        )
    share = pd.to_numeric(table["share"], errors="coerce").to_numpy(dtype=float)
    _check_nonnegative(share, "share", source)
    frame = table[["question", "type", "option"]].astype(str).assign(share=share)
    if "type_weight" in table.columns:
        tw = pd.to_numeric(table["type_weight"], errors="coerce").to_numpy(dtype=float)
        _check_nonnegative(tw, "type_weight", source)
        frame = frame.assign(type_weight=tw)
    else:
        frame = frame.assign(type_weight=1.0)
    result = []
    for question, block in frame.groupby("question", sort=False):
        grid = block.pivot_table(index="type", columns="option", values="share", aggfunc="sum")
        if grid.isna().any().any():
            raise SocialChoiceError(
                f"{source}: question {question!r} lacks some (type, option) rows; give every "
                "type a share for every option (0 is allowed)"
            )
        type_weight = block.groupby("type")["type_weight"].first().reindex(grid.index)
        if type_weight.sum() <= 0:
            raise SocialChoiceError(f"{source}: question {question!r} has zero total type_weight")
        values = grid.to_numpy(dtype=float)
        if np.any(values.sum(axis=1) <= 0):
            raise SocialChoiceError(
                f"{source}: question {question!r} has a type whose shares are all zero"
            )
        result.append(QuestionShares(
            question=str(question), options=tuple(map(str, grid.columns)),
            types=tuple(map(str, grid.index)),
            shares=values / values.sum(axis=1, keepdims=True),
            type_probs=(type_weight / type_weight.sum()).to_numpy(dtype=float),
        ))
    return result


def _weights(table: pd.DataFrame, source: str) -> np.ndarray:
    if "weight" not in table.columns:
        return np.ones(len(table))
    weight = pd.to_numeric(table["weight"], errors="coerce").to_numpy(dtype=float)
    _check_nonnegative(weight, "weight", source)
    return weight


def _check_nonnegative(values: np.ndarray, field: str, source: str) -> None:
    bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
    if bad.size:
        row = int(bad[0])
        raise SocialChoiceError(
            f"{source}: row {row} field {field!r} is {values[row]!r}; {field}s must be finite "
            f"and nonnegative ({bad.size} bad row(s) in total)"
        )


def _check_declared_options(frame: pd.DataFrame, options: dict[str, list[str]],
                            source: str) -> None:
    undeclared = sorted(set(frame["question"]) - set(options))
    if undeclared:
        raise SocialChoiceError(
            f"{source}: question {undeclared[0]!r} has no declared options "
            f"({len(undeclared)} such question(s)); add it to the options file"
        )
    allowed = pd.Series(
        [(q, str(a)) for q, labels in options.items() for a in labels], dtype=object
    )
    pairs = pd.Series(list(zip(frame["question"], frame["answer"], strict=True)), dtype=object)
    bad = np.flatnonzero(~pairs.isin(set(allowed)).to_numpy())
    if bad.size:
        row = int(bad[0])
        question, answer = pairs.iloc[row]
        raise SocialChoiceError(
            f"{source}: row {row} field 'answer' has unknown option {answer!r} for question "
            f"{question!r}; declared options: {list(options[question])}"
        )
