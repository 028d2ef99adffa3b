"""Community Alignment (Zhang et al. 2025, ``facebook/community-alignment-dataset``) -> pairs.

Source: the release CSV (``community_alignment.csv``; the older ``full_``/``filtered_`` CSVs have
the same columns) or the Hub id. One CSV row is one annotator's conversation of up to four turns
(``first`` … ``fourth``); each turn shows four candidates ``response_a`` … ``response_d`` and
``{turn}_turn_preferred_response`` names the preferred one's column suffix ([CA-FORMAT, Columns]).

Pairs: per turn, the preferred candidate vs each of the other three (**3 pairs per complete
turn**; [CA-FORMAT, Pairs]). Prompt: earlier turns (user prompt + preferred response) and the turn's
prompt, rendered per ``chat``. Candidates that are empty/missing or identical to the preferred
text are dropped with counts in the log; a turn without a prompt or preferred response ends the
conversation (remaining turns counted as dropped). A trailing ``<|end_of_text|>`` is stripped.

Options (:class:`CommunityAlignmentOptions`): ``language`` (e.g. ``"en"``, the MixDPO paper's
setting; filters ``assigned_lang``), ``first_turn_only``, ``pregenerated_only``
(``is_pregenerated_first_prompt``: prompts shared across annotators). ``attributes`` =
``age``, ``gender``, ``education``, ``political``, ``ethnicity``, ``country`` (from the
``annotator_*`` columns; missing values omitted);
``context`` = ``{"language": assigned_lang}``. ``item_id`` is a content hash of the prompt and the
unordered response pair, so the same comparison shown to several annotators shares an id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from pluralign.data.formats.base import ChatOptions, Format
from pluralign.data.readers import (
    DropCounter,
    read_csv,
    read_header,
    render_completion,
    render_prompt,
)
from pluralign.data.schema import encode_mapping, schema_error

TURNS = ("first", "second", "third", "fourth")
SLOTS = ("response_a", "response_b", "response_c", "response_d")
ATTRIBUTE_COLUMNS = {"annotator_age": "age", "annotator_gender": "gender",
                     "annotator_education_level": "education", "annotator_political": "political",
                     "annotator_ethnicity": "ethnicity", "annotator_country": "country"}
REQUIRED = ("conversation_id", "annotator_id", "first_turn_prompt",
            "first_turn_preferred_response", *(f"first_turn_{s}" for s in SLOTS))
END_OF_TEXT = "<|end_of_text|>"
HUB_ID = "facebook/community-alignment-dataset"


@dataclass
class CommunityAlignmentOptions(ChatOptions):
    """Options of the ``community_alignment`` format.

    Attributes:
        language: keep only conversations in this assigned language, e.g. 'en' (the MixDPO
            paper's setting); None keeps every language.
        first_turn_only: only the first turn of each conversation.
        pregenerated_only: only conversations that start from a pregenerated prompt (shared
            across annotators), not the annotator's own.
    """

    LABEL = "Community Alignment"

    language: str | None = None
    first_turn_only: bool = False
    pregenerated_only: bool = False


def _clean(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    text = str(value).strip()
    while text.endswith(END_OF_TEXT):
        text = text[: -len(END_OF_TEXT)].rstrip()
    return text


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def _item_id(prompt: Any, a: str, b: str) -> str:
    lo, hi = sorted((a, b))
    digest = hashlib.sha1(repr((prompt, lo, hi)).encode("utf-8")).hexdigest()[:16]
    return f"ca:{digest}"


def community_alignment_pairs(frame: pd.DataFrame, source: str,
                              options: CommunityAlignmentOptions) -> dict[str, list[Any]]:
    """Column dict of pairs from the release table (one row per conversation)."""
    language, first_turn_only = options.language, options.first_turn_only
    chat, limit = options.chat, options.limit
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise schema_error(source, None, missing[0],
                           "missing column; is this the Community Alignment release CSV?")
    columns: dict[str, list[Any]] = {k: [] for k in (
        "prompt", "chosen", "rejected", "annotator_id", "attributes", "context", "item_id",
        "conversation_id", "turn", "chosen_slot", "rejected_slot")}
    drops = DropCounter(source)
    records = frame.to_dict("records")
    for row, rec in enumerate(records):
        if language is not None and _clean(rec.get("assigned_lang")) != language:
            drops.drop(f"conversations not in language {language!r} (filter)")
            continue
        if options.pregenerated_only and not _truthy(rec.get("is_pregenerated_first_prompt")):
            drops.drop("conversations with the annotator's own first prompt (filter)")
            continue
        attributes = encode_mapping({name: _clean(rec.get(col)) or None
                                     for col, name in ATTRIBUTE_COLUMNS.items()})
        context = encode_mapping({"language": _clean(rec.get("assigned_lang")) or None})
        annotator = _clean(rec.get("annotator_id")) or None
        history: list[tuple[str, str]] = []
        turns = TURNS[:1] if first_turn_only else TURNS
        if first_turn_only:
            later = sum(bool(_clean(rec.get(f"{t}_turn_prompt"))) for t in TURNS[1:])
            if later:
                drops.drop("later turns (first_turn_only filter)", later)
        for position, turn in enumerate(turns):
            user_text = _clean(rec.get(f"{turn}_turn_prompt"))
            preferred = _clean(rec.get(f"{turn}_turn_preferred_response"))
            if not user_text:
                break  # the conversation is shorter
            if preferred not in SLOTS:
                if preferred:
                    raise schema_error(source, row, f"{turn}_turn_preferred_response",
                                       f"value {preferred!r} is not one of {SLOTS}")
                drops.drop("turns without a preferred response (and later turns)",
                           len(turns) - position)
                break
            chosen_text = _clean(rec.get(f"{turn}_turn_{preferred}"))
            if not chosen_text:
                drops.drop("turns whose preferred response is empty (and later turns)",
                           len(turns) - position)
                break
            prompt = render_prompt(history + [("user", user_text)], chat)
            for slot in SLOTS:
                if slot == preferred:
                    continue
                other = _clean(rec.get(f"{turn}_turn_{slot}"))
                if not other:
                    drops.drop("pairs with an empty or missing candidate")
                    continue
                if other == chosen_text:
                    drops.drop("pairs with identical responses")
                    continue
                columns["prompt"].append(prompt)
                columns["chosen"].append(render_completion(chosen_text, chat))
                columns["rejected"].append(render_completion(other, chat))
                columns["annotator_id"].append(annotator)
                columns["attributes"].append(attributes)
                columns["context"].append(context)
                columns["item_id"].append(_item_id(prompt, chosen_text, other))
                columns["conversation_id"].append(_clean(rec.get("conversation_id")))
                columns["turn"].append(position)
                columns["chosen_slot"].append(preferred)
                columns["rejected_slot"].append(slot)
                if limit is not None and len(columns["prompt"]) >= limit:
                    drops.log(limit)
                    return columns
            history += [("user", user_text), ("assistant", chosen_text)]
    drops.log(len(columns["prompt"]))
    return columns


def _detect(path: Path) -> bool:
    return (path.is_file() and path.name.lower().endswith(".csv")
            and "first_turn_preferred_response" in read_header(path))


def _load_local(path: Path, options: CommunityAlignmentOptions) -> dict[str, list[Any]]:
    options.single_split("community_alignment")
    return community_alignment_pairs(read_csv(path), str(path), options)


def _load_hub(source: str, options: CommunityAlignmentOptions) -> dict[str, list[Any]]:
    frame = datasets.load_dataset(source, split=options.split or "train").to_pandas()
    return community_alignment_pairs(frame, source, options)


FORMAT = Format("community_alignment", CommunityAlignmentOptions,
                "a .csv file whose header has first_turn_preferred_response", _detect,
                _load_local, _load_hub, hub_ids=(HUB_ID,))
