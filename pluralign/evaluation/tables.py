"""Reading per-pair tables (margins written by ``evaluate``, ``--baseline-margins``, ``--margins``,
``--compare`` files) with one-line errors instead of pandas' or pyarrow's tracebacks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pluralign.evaluation.errors import EvaluationError


def read_table(path: str | os.PathLike[str], required: Sequence[str] = ()) -> pd.DataFrame:
    """Read a ``.parquet`` file, or any other suffix as CSV, into a DataFrame.

    Raises :class:`EvaluationError` naming the file when it is missing, unreadable, not valid
    CSV/parquet (empty, binary, truncated), has no rows, or lacks one of the ``required`` columns.
    """
    p = Path(path)
    if not p.is_file():
        raise EvaluationError(f"{path}: no such file")
    kind = "parquet" if p.suffix == ".parquet" else "CSV"
    try:
        frame = pd.read_parquet(p) if kind == "parquet" else pd.read_csv(p)
    except (OSError, ValueError) as exc:  # EmptyDataError, ParserError, UnicodeDecodeError, Arrow
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EvaluationError(f"{path}: cannot read it as {kind} ({reason}); pass a CSV or "
                              "parquet file as written by `pluralign evaluate`") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        noun = "column" if len(missing) == 1 else "columns"
        raise EvaluationError(f"{path}: no {', '.join(map(repr, missing))} {noun}; columns: "
                              f"{sorted(map(str, frame.columns))}")
    if frame.empty:
        raise EvaluationError(f"{path}: no rows")
    return frame
