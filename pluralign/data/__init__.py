"""Preference data: the schema every layer reads, loaders, synthetic populations, splits, pairing.

Public names: :class:`SchemaError`, :func:`validate`, :func:`row_attributes`,
:func:`row_context`, :func:`to_pandas` (schema); :func:`load_preferences` (loaders);
:data:`FORMATS` and :func:`detect_format` (the loader registry, :mod:`pluralign.data.formats`);
:func:`make_population`, :class:`PopulationConfig`, :func:`load_population` (synthetic);
:func:`export_preferences` (TRL-format export); :class:`DataConfig` and :func:`load_data` (the
``data:`` section of every command); the ``splits`` and ``pairing`` submodules.
"""

from pluralign.data.config import DataConfig, load_data
from pluralign.data.export import EXPORT_FORMATS, ExportResult, export_preferences
from pluralign.data.formats import FORMATS, detect_format
from pluralign.data.loaders import load_preferences
from pluralign.data.schema import (
    COLUMNS,
    SchemaError,
    row_attributes,
    row_context,
    to_pandas,
    validate,
)
from pluralign.data.synthetic import Population, PopulationConfig, load_population, make_population

__all__ = ["COLUMNS", "DataConfig", "EXPORT_FORMATS", "FORMATS", "ExportResult", "Population",
           "PopulationConfig", "SchemaError", "detect_format", "export_preferences",
           "load_data", "load_population", "load_preferences", "make_population", "row_attributes",
           "row_context", "to_pandas", "validate"]
