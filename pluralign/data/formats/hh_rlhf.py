"""Anthropic HH-RLHF (``Anthropic/hh-rlhf``) -> preference pairs.

Source: a ``train.jsonl(.gz)``/``test.jsonl(.gz)`` file, a subset folder (``helpful-base/``
holding ``train.jsonl.gz`` and ``test.jsonl.gz``), a root folder holding subset folders (option
``subsets``; default every preference subset present, never ``red-team-attempts``), or the Hub id.
Rows are ``{"chosen": transcript, "rejected": transcript}`` ([HH-FORMAT, Rows]).

Split (DPO reference convention, [HH-FORMAT, Prompt split]): the prompt is ``chosen`` up to and
including its last ``"\\n\\nAssistant:"``; ``chosen``/``rejected`` are the remainders (leading space
kept), so ``prompt + chosen`` and ``prompt + rejected`` are exactly the two transcripts. Unlike a
character-level common prefix, this never cuts into responses that share their first words.
With ``chat=True`` the prompt becomes user/assistant messages and each response one assistant
message (TRL's conversational convention, leading space removed).

``annotator_id`` is None (HH has no annotator information); ``context`` = ``{"subset": name}``
when the subset is known from the folder layout; ``item_id`` = ``"{subset}/{split}:{row}"``.
Rows whose ``rejected`` does not start with the same prompt, whose final responses are empty, or
whose two responses are identical are dropped with counts in the log (the real test split has 4
empty final responses).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from pluralign.data.formats.base import ChatOptions, Format
from pluralign.data.readers import ASSISTANT, DropCounter, first_jsonl_record, iter_jsonl
from pluralign.data.schema import encode_mapping, schema_error
from pluralign.errors import ConfigError
from pluralign.validation import check_names

PREFERENCE_SUBSETS = ("harmless-base", "helpful-base", "helpful-online",
                      "helpful-rejection-sampled")
HUB_ID = "Anthropic/hh-rlhf"
SPLIT_FILES = ("train.jsonl.gz", "test.jsonl.gz", "train.jsonl", "test.jsonl")
_TURN = re.compile(r"\n\n(Human|Assistant): ?")


@dataclass
class HHOptions(ChatOptions):
    """Options of the ``hh_rlhf`` format.

    Attributes:
        subsets: subset folders to read from a root folder (or data_dirs of the Hub dataset);
            None reads every preference subset present (never red-team-attempts).
    """

    LABEL = "HH-RLHF"

    subsets: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.subsets is None:
            return
        self.subsets = check_names(self.subsets, "HH-RLHF subsets")
        unknown = sorted(set(self.subsets) - set(PREFERENCE_SUBSETS))
        if unknown:
            raise ConfigError(f"unknown HH-RLHF subsets {unknown}; preference subsets are "
                              f"{PREFERENCE_SUBSETS}")


def split_transcript(chosen: str, rejected: str) -> tuple[str, str, str] | None:
    """``(prompt, chosen_response, rejected_response)`` by the last ``"\\n\\nAssistant:"`` of
    ``chosen``; None when ``rejected`` does not share that prompt or there is no marker."""
    cut = chosen.rfind(ASSISTANT)
    if cut < 0:
        return None
    prompt = chosen[: cut + len(ASSISTANT)]
    if not rejected.startswith(prompt):
        return None
    return prompt, chosen[len(prompt):], rejected[len(prompt):]


def prompt_messages(prompt: str) -> list[dict[str, str]]:
    """An HH prompt (ending in ``"\\n\\nAssistant:"``) as TRL conversational messages."""
    body = prompt[: -len(ASSISTANT)] if prompt.endswith(ASSISTANT) else prompt
    parts = _TURN.split(body)
    # parts = [text before the first marker, role, text, role, text, ...]
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()}
            for i in range(1, len(parts) - 1, 2)]


def hh_files(source: Path, split: str | None, subsets: list[str] | None
             ) -> list[tuple[Path, str | None, str]]:
    """``(file, subset or None, split name)`` for a file, a subset folder or a root folder."""
    if source.is_file():
        subset = source.parent.name if source.parent.name in PREFERENCE_SUBSETS else None
        name = source.name.split(".")[0]
        return [(source, subset, name)]
    split = split or "train"

    def split_file(folder: Path) -> Path | None:
        return next((folder / f"{split}{ext}" for ext in (".jsonl.gz", ".jsonl")
                     if (folder / f"{split}{ext}").is_file()), None)

    direct = split_file(source)
    if direct is not None:
        return [(direct, source.name if source.name in PREFERENCE_SUBSETS else None, split)]
    wanted = subsets or [s for s in PREFERENCE_SUBSETS if (source / s).is_dir()]
    found = []
    for subset in wanted:
        path = split_file(source / subset)
        if path is None:
            raise schema_error(str(source / subset), None, None,
                               f"no {split}.jsonl.gz or {split}.jsonl here; check the subset name "
                               "and split")
        found.append((path, subset, split))
    if not found:
        raise schema_error(str(source), None, None,
                           f"no HH-RLHF {split}.jsonl(.gz) file or subset folder found")
    return found


def hh_pairs(records: Any, source: str, subset: str | None, split: str, chat: bool = False,
             limit: int | None = None, columns: dict[str, list[Any]] | None = None
             ) -> dict[str, list[Any]]:
    """Append the pairs of ``(row, {"chosen", "rejected"})`` records to ``columns``; return it."""
    if columns is None:
        columns = {k: [] for k in ("prompt", "chosen", "rejected", "annotator_id", "attributes",
                                   "context", "item_id")}
    drops = DropCounter(source)
    context = encode_mapping({"subset": subset})
    name = subset or Path(source).stem
    kept = 0
    for row, rec in records:
        if limit is not None and len(columns["prompt"]) >= limit:
            break
        for field in ("chosen", "rejected"):
            if not isinstance(rec.get(field), str):
                raise schema_error(source, row, field, "missing or not a transcript string")
        parts = split_transcript(rec["chosen"], rec["rejected"])
        if parts is None:
            drops.drop("rows whose transcripts do not share a prompt ending in '\\n\\nAssistant:'")
            continue
        prompt, chosen, rejected = parts
        if not chosen.strip() or not rejected.strip():
            drops.drop("rows with an empty final response")
            continue
        if chosen.strip() == rejected.strip():
            drops.drop("rows with identical final responses")
            continue
        if chat:
            prompt = prompt_messages(prompt)
            chosen = [{"role": "assistant", "content": chosen.strip()}]
            rejected = [{"role": "assistant", "content": rejected.strip()}]
        columns["prompt"].append(prompt)
        columns["chosen"].append(chosen)
        columns["rejected"].append(rejected)
        columns["annotator_id"].append(None)
        columns["attributes"].append("{}")
        columns["context"].append(context)
        columns["item_id"].append(f"{name}/{split}:{row}")
        kept += 1
    drops.log(kept)
    return columns


def load_hh_folder(source: Path, options: HHOptions) -> dict[str, list[Any]]:
    """Pairs of every file :func:`hh_files` selects, concatenated in subset order."""
    columns = None
    for path, subset, split_name in hh_files(source, options.split, options.subsets):
        columns = hh_pairs(iter_jsonl(path), str(path), subset, split_name, chat=options.chat,
                           limit=options.limit, columns=columns)
    return columns


def is_hh_record(record: dict[str, Any] | None) -> bool:
    """An HH-RLHF row: exactly ``chosen``/``rejected`` transcripts starting with a Human turn."""
    return (record is not None and set(record) == {"chosen", "rejected"}
            and isinstance(record["chosen"], str) and record["chosen"].startswith("\n\nHuman:"))


def _detect(path: Path) -> bool:
    if path.is_dir():
        return any((path / n).is_file() for n in SPLIT_FILES) or any(
            (path / s / n).is_file() for s in PREFERENCE_SUBSETS for n in SPLIT_FILES)
    return (path.name.lower().endswith((".jsonl", ".jsonl.gz", ".json"))
            and is_hh_record(first_jsonl_record(path)))


def _load_hub(source: str, options: HHOptions) -> dict[str, list[Any]]:
    columns = None
    for subset in options.subsets or [None]:
        rows = datasets.load_dataset(source, data_dir=subset, split=options.split or "train")
        columns = hh_pairs(enumerate(rows), source, subset, options.split or "train",
                           chat=options.chat, limit=options.limit, columns=columns)
    return columns


FORMAT = Format("hh_rlhf", HHOptions,
                "a folder of train/test.jsonl(.gz) files or of subset folders holding them, or a "
                ".jsonl(.gz) file whose first record is exactly chosen/rejected transcripts "
                "starting with '\\n\\nHuman:'",
                _detect, load_hh_folder, _load_hub, hub_ids=(HUB_ID,))
