"""The evaluation layer's error type."""

from pluralign.errors import PluralignError


class EvaluationError(PluralignError, ValueError):
    """Evaluation input is empty, malformed or degenerate; the message says what to fix."""
