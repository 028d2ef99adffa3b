"""Preference data: the schema every layer reads, loaders, synthetic populations, splits, pairing.

Public names: :class:`SchemaError`, :func:`validate`, :func:`row_attributes`,
:func:`row_context`, :func:`to_pandas` (schema); :func:`load_preferences` (loaders); the
``synthetic``, ``splits`` and ``pairing`` submodules.
"""

from pluralign.data.loaders import FORMATS, detect_format, load_preferences
from pluralign.data.schema import (
    COLUMNS,
    SchemaError,
    row_attributes,
    row_context,
    to_pandas,
    validate,
)

__all__ = ["COLUMNS", "FORMATS", "SchemaError", "detect_format", "load_preferences",
           "row_attributes", "row_context", "to_pandas", "validate"]
