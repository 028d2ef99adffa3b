"""Shared pieces of the loaders: reading JSON Lines (plain or gzip) and CSV files, counting dropped
rows, and rendering a chat history as a prompt.

Prompt rendering (``chat`` option of the loaders):

* ``chat=False`` (default): the Anthropic HH transcript convention used by the DPO reference code,
  ``"\\n\\nHuman: u0\\n\\nAssistant: a0\\n\\nHuman: u1\\n\\nAssistant:"``, and completions with a
  leading space (``" response"``) so that ``prompt + chosen`` is the full transcript (TRL's
  standard format).
* ``chat=True``: TRL's conversational format; the prompt is a list of ``{"role", "content"}``
  messages (``user``/``assistant``) and each completion is ``[{"role": "assistant", ...}]``.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pluralign.data.schema import schema_error

logger = logging.getLogger("pluralign.data.loaders")

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row, record)`` from a ``.jsonl`` or ``.jsonl.gz`` file; blank lines are skipped.

    Raises:
        SchemaError: the file cannot be opened or decompressed, or a line is not a JSON object
            (the message names the file and the 0-based row).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    row = 0
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise schema_error(str(path), row, None, f"not valid JSON ({exc.msg})") from exc
                if not isinstance(record, dict):
                    raise schema_error(str(path), row, None, "each line must be a JSON object")
                yield row, record
                row += 1
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise schema_error(str(path), row if row else None, None,
                           f"unreadable file ({exc}); check the path and that it is UTF-8 "
                           "JSON Lines (optionally gzip-compressed)") from exc


def first_jsonl_record(path: Path) -> dict[str, Any] | None:
    """The first record of a JSON Lines file (None when it has none)."""
    return next((rec for _, rec in iter_jsonl(path)), None)


def read_header(path: Path) -> str:
    """The first line of a text file (a CSV header)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise schema_error(str(path), None, None, f"unreadable file ({exc})") from exc


def read_csv(path: Path) -> pd.DataFrame:
    """A CSV file with every cell as text (empty cells are missing)."""
    try:
        return pd.read_csv(path, dtype=object, keep_default_na=False, na_values=[""])
    except (OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise schema_error(str(path), None, None, f"unreadable CSV file ({exc})") from exc


class DropCounter:
    """Counts rows a loader skips, by reason, and logs one summary line (nothing silently)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.counts: Counter[str] = Counter()

    def drop(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n

    def log(self, kept: int) -> None:
        if self.counts:
            details = ", ".join(f"{n} {reason}" for reason, n in sorted(self.counts.items()))
            logger.warning("%s: kept %d pairs; dropped %s", self.source, kept, details)
        else:
            logger.info("%s: kept %d pairs; dropped none", self.source, kept)


def render_prompt(history: list[tuple[str, str]], chat: bool) -> str | list[dict[str, str]]:
    """Render ``[(role, text), ...]`` (roles user/assistant, the last one user) as a prompt."""
    if chat:
        return [{"role": role, "content": text} for role, text in history]
    tag = {"user": HUMAN, "assistant": ASSISTANT}
    return "".join(f"{tag[role]} {text}" for role, text in history) + ASSISTANT


def render_completion(text: str, chat: bool) -> str | list[dict[str, str]]:
    """A response as a completion: ``" text"`` or ``[{"role": "assistant", "content": text}]``."""
    return [{"role": "assistant", "content": text}] if chat else " " + text


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts to dotted keys (``{"religion": {"simplified": x}}`` -> ``religion.simplified``);
    values become strings, None/NaN are dropped."""
    out: dict[str, str] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, prefix=name + "."))
        elif value is None or (isinstance(value, float) and value != value):
            continue
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value, ensure_ascii=False)
        else:
            out[name] = str(value)
    return out
