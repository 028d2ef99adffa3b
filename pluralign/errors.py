"""Exception hierarchy: one base class, one subclass per layer ([CONVENTIONS, Errors]).

Every error message says what to fix. The CLI turns any :class:`PluralignError` into a one-line
message and exit status 2 instead of a traceback.
"""


class PluralignError(Exception):
    """Base class of every error pluralign raises on purpose."""


class ConfigError(PluralignError, ValueError):
    """A configuration value is unknown, out of range or inconsistent; raised before work starts."""
