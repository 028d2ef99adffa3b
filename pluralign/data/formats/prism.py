"""PRISM (Kirk et al. 2024, ``HannahRoseKirk/prism-alignment``) -> preference pairs.

Source: a folder with the release's ``conversations.jsonl`` and ``survey.jsonl`` (other files are
ignored), or the Hub id. Conversations are joined with the survey on ``user_id``; a conversation
whose user has no survey row is an error (``SchemaError`` naming the conversations file, row and
``user_id``).

Pairs, per rated turn (``conversation_history`` items grouped by ``turn``; [PRISM-FORMAT, Pairs]):

* ``pairs="chosen_vs_rest"`` (default; LoRe's construction): the ``if_chosen`` response vs each
  other response of the turn. A turn with 4 rated responses gives **3 pairs**, a later turn with
  2 responses gives 1.
* ``pairs="by_score"``: every pair of the turn's responses whose scores differ by more than
  ``min_score_gap`` (default 0, so ties are skipped), the higher score as chosen. A turn with 4
  responses with distinct scores gives **6 pairs** (= 4·3/2).

Prompt: the conversation so far — earlier user messages and the *chosen* model responses (role
"model" renamed "assistant"), then the turn's user message — rendered per ``chat`` (see
:mod:`pluralign.data.readers`). Responses equal to the chosen text (PRISM can mark identical A/B
texts as both chosen), empty responses (``"EMPTY STRING"``) and turns without a chosen response are
dropped with counts in the log.

Columns: the schema plus ``conversation_id``, ``turn``, ``chosen_score``, ``rejected_score``,
``chosen_model``, ``rejected_model``. ``annotator_id`` = ``user_id``; ``attributes`` = the survey
answers flattened with dots (``age``, ``gender``, ``education``, ``employment_status``,
``religion.simplified``, ``location.reside_country``, ``stated_prefs.safety``, …) without the
bookkeeping and free-text fields in :data:`SURVEY_EXCLUDED`; ``context`` = ``conversation_type``;
``item_id`` = ``"{conversation_id}:{turn}:{within_turn_id}-{within_turn_id}"``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from pluralign.data.formats.base import ChatOptions, Format
from pluralign.data.readers import (
    DropCounter,
    flatten,
    iter_jsonl,
    render_completion,
    render_prompt,
)
from pluralign.data.schema import encode_mapping, schema_error
from pluralign.errors import ConfigError
from pluralign.validation import check_number

PAIRINGS = ("chosen_vs_rest", "by_score")
EMPTY = "EMPTY STRING"
SURVEY_EXCLUDED = ("user_id", "survey_only", "num_completed_conversations", "consent",
                   "consent_age", "self_description", "system_string", "generated_datetime",
                   "timing_duration_s", "timing_duration_mins", "study_id",
                   "lm_usecases.other_text", "stated_prefs.other_text")
SURVEY_EXCLUDED_PREFIXES = ("order_lm_usecases.", "order_stated_prefs.")
HUB_ID = "HannahRoseKirk/prism-alignment"


@dataclass
class PrismOptions(ChatOptions):
    """Options of the ``prism`` format.

    Attributes:
        pairs: 'chosen_vs_rest' (LoRe's construction: the chosen response vs each other
            response of the turn) or 'by_score' (every pair of the turn's responses whose scores
            differ by more than min_score_gap, the higher score as chosen).
        min_score_gap: by_score only: skip pairs whose scores differ by this much or less
            (0 skips ties).
    """

    LABEL = "PRISM"

    pairs: str = "chosen_vs_rest"
    min_score_gap: float = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pairs not in PAIRINGS:
            raise ConfigError(f"PRISM pairs={self.pairs!r} is unknown; use one of {PAIRINGS}")
        check_number(self.min_score_gap, "PRISM min_score_gap", minimum=0)


def survey_attributes(record: dict[str, Any]) -> dict[str, str]:
    """A survey row as flat str -> str demographics (without bookkeeping/free-text fields)."""
    flat = flatten(record)
    return {k: v for k, v in flat.items()
            if k not in SURVEY_EXCLUDED and not k.startswith(SURVEY_EXCLUDED_PREFIXES)}


def _text(item: dict[str, Any]) -> str:
    content = item.get("content")
    return "" if not isinstance(content, str) or content == EMPTY else content.strip()


def _turns(history: list[dict[str, Any]]) -> Iterator[tuple[int, str, list[dict[str, Any]]]]:
    grouped: dict[int, dict[str, Any]] = {}
    for item in history:
        turn = grouped.setdefault(int(item.get("turn") or 0), {"user": "", "models": []})
        if item.get("role") == "user":
            turn["user"] = _text(item)
        elif item.get("role") == "model":
            turn["models"].append(item)
    for t in sorted(grouped):
        yield t, grouped[t]["user"], grouped[t]["models"]


def _turn_pairs(models: list[dict[str, Any]], chosen: dict[str, Any], pairs: str,
                min_score_gap: float, drops: DropCounter
                ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    if pairs == "chosen_vs_rest":
        candidates = [(chosen, m) for m in models if m is not chosen and not m.get("if_chosen")]
        drops.drop("duplicate chosen responses", sum(
            1 for m in models if m is not chosen and m.get("if_chosen")))
    else:
        candidates = []
        for a, b in itertools.combinations(models, 2):
            sa, sb = a.get("score"), b.get("score")
            if sa is None or sb is None or abs(sa - sb) <= min_score_gap:
                drops.drop(f"pairs with score gap <= {min_score_gap} or no score")
                continue
            candidates.append((a, b) if sa > sb else (b, a))
    for win, lose in candidates:
        if not _text(lose) or not _text(win):
            drops.drop("pairs with an empty response")
        elif _text(win) == _text(lose):
            drops.drop("pairs with identical responses")
        else:
            yield win, lose


def prism_pairs(conversations: Iterable[tuple[int, dict[str, Any]]],
                survey: dict[str, dict[str, Any]], source: str, options: PrismOptions
                ) -> dict[str, list[Any]]:
    """Column dict of pairs from ``(row, conversation record)`` and ``survey`` keyed by user_id."""
    chat, limit = options.chat, options.limit
    columns: dict[str, list[Any]] = {k: [] for k in (
        "prompt", "chosen", "rejected", "annotator_id", "attributes", "context", "item_id",
        "conversation_id", "turn", "chosen_score", "rejected_score", "chosen_model",
        "rejected_model")}
    drops = DropCounter(source)
    encoded: dict[str, str] = {}
    for row, conv in conversations:
        user = conv.get("user_id")
        if user not in survey:
            raise schema_error(f"{source}/conversations.jsonl", row, "user_id",
                               f"no survey row for user {user!r} in survey.jsonl; use the "
                               "survey file of the same release")
        if user not in encoded:
            encoded[user] = encode_mapping(survey_attributes(survey[user]))
        history = conv.get("conversation_history")
        if not isinstance(history, list):
            raise schema_error(f"{source}/conversations.jsonl", row, "conversation_history",
                               "must be a list of turn items")
        context = encode_mapping({"conversation_type": conv.get("conversation_type")})
        so_far: list[tuple[str, str]] = []
        turns = list(_turns(history))
        for position, (turn, user_text, models) in enumerate(turns):
            chosen = next((m for m in models if m.get("if_chosen")), None)
            if not user_text or chosen is None or not _text(chosen):
                # the rest of the conversation has no well-defined history either
                drops.drop("turns at or after a turn without user message or chosen response",
                           len(turns) - position)
                break
            prompt = render_prompt(so_far + [("user", user_text)], chat)
            for win, lose in _turn_pairs(models, chosen, options.pairs, options.min_score_gap,
                                         drops):
                ids = sorted((int(win.get("within_turn_id") or 0),
                              int(lose.get("within_turn_id") or 0)))
                columns["prompt"].append(prompt)
                columns["chosen"].append(render_completion(_text(win), chat))
                columns["rejected"].append(render_completion(_text(lose), chat))
                columns["annotator_id"].append(str(user))
                columns["attributes"].append(encoded[user])
                columns["context"].append(context)
                columns["item_id"].append(f"{conv.get('conversation_id')}:{turn}:{ids[0]}-{ids[1]}")
                columns["conversation_id"].append(conv.get("conversation_id"))
                columns["turn"].append(turn)
                columns["chosen_score"].append(win.get("score"))
                columns["rejected_score"].append(lose.get("score"))
                columns["chosen_model"].append(win.get("model_name"))
                columns["rejected_model"].append(lose.get("model_name"))
                if limit is not None and len(columns["prompt"]) >= limit:
                    drops.log(limit)
                    return columns
            so_far += [("user", user_text), ("assistant", _text(chosen))]
    drops.log(len(columns["prompt"]))
    return columns


def _detect(path: Path) -> bool:
    return (path.is_dir() and (path / "conversations.jsonl").is_file()
            and (path / "survey.jsonl").is_file())


def _load_local(path: Path, options: PrismOptions) -> dict[str, list[Any]]:
    options.single_split("prism")
    survey = {rec.get("user_id"): rec for _, rec in iter_jsonl(path / "survey.jsonl")}
    return prism_pairs(iter_jsonl(path / "conversations.jsonl"), survey, str(path), options)


def _load_hub(source: str, options: PrismOptions) -> dict[str, list[Any]]:
    conversations = datasets.load_dataset(source, "conversations", split="train")
    survey = datasets.load_dataset(source, "survey", split="train")
    return prism_pairs(enumerate(conversations), {r["user_id"]: r for r in survey}, source,
                       options)


FORMAT = Format("prism", PrismOptions, "a folder with conversations.jsonl and survey.jsonl",
                _detect, _load_local, _load_hub, hub_ids=(HUB_ID,))
