"""The evaluation layer's error type."""

from collections.abc import Iterable

from pluralign.errors import PluralignError


class EvaluationError(PluralignError, ValueError):
    """Evaluation input is empty, malformed or degenerate; the message says what to fix."""


def require_column(columns: Iterable[object], name: str, role: str) -> None:
    """Raise :class:`EvaluationError` if ``name`` is not among ``columns`` (a frame's columns);
    the message calls it by its ``role`` (e.g. ``"cluster column"``) and lists what exists."""
    available = sorted(map(str, columns))
    if name not in available:
        raise EvaluationError(f"{role} {name!r} not found; available: {available}")
