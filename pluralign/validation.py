"""Checks of numeric config fields, shared by every layer's dataclass configs.

A learning rate of ``-0.1``, ``.nan``, ``inf`` or ``"abc"`` must fail where the config is built,
with a message naming the field, the value and what to use instead, never later as a NaN model or
"'>=' not supported between 'str' and 'int'".
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from pluralign.errors import ConfigError


def _requirement(integer: bool, minimum: float | None, maximum: float | None,
                 exclusive_minimum: bool, exclusive_maximum: bool) -> str:
    kind = "an integer" if integer else "a finite number"
    if minimum is not None and maximum is not None:
        left, right = ("(" if exclusive_minimum else "["), (")" if exclusive_maximum else "]")
        return f"{kind} in {left}{minimum:g}, {maximum:g}{right}"
    if minimum is not None:
        return f"{kind} {'>' if exclusive_minimum else '>='} {minimum:g}"
    if maximum is not None:
        return f"{kind} {'<' if exclusive_maximum else '<='} {maximum:g}"
    return kind


def check_number(value: object, field: str, *, minimum: float | None = None,
                 maximum: float | None = None, exclusive_minimum: bool = False,
                 exclusive_maximum: bool = False, integer: bool = False,
                 error: type[Exception] = ConfigError) -> float | int:
    """Return ``value`` (as ``int`` if ``integer``, else ``float``) if it is a finite number in
    the given range; otherwise raise ``error`` naming ``field`` and ``value``.

    Booleans are refused (``True`` is not a learning rate); so are NaN and ±inf.

    Example: ``check_number(cfg.lr, "PALConfig.lr_users", minimum=0, exclusive_minimum=True)``.
    """
    wanted = _requirement(integer, minimum, maximum, exclusive_minimum, exclusive_maximum)
    number_type = Integral if integer else Real
    ok = not isinstance(value, bool) and isinstance(value, number_type)
    if ok:
        x = float(value)  # type: ignore[arg-type]
        ok = math.isfinite(x)
        if ok and minimum is not None:
            ok = x > minimum if exclusive_minimum else x >= minimum
        if ok and maximum is not None:
            ok = x < maximum if exclusive_maximum else x <= maximum
    if not ok:
        raise error(f"{field}={value!r} is invalid; use {wanted}")
    return int(value) if integer else float(value)  # type: ignore[arg-type]


#: Common field rules for :func:`check_fields`.
POSITIVE = {"minimum": 0, "exclusive_minimum": True}
NON_NEGATIVE = {"minimum": 0}
FRACTION = {"minimum": 0, "maximum": 1, "exclusive_maximum": True}
#: The open interval (0, 1), e.g. a held-out share.
OPEN_UNIT = {"minimum": 0, "maximum": 1, "exclusive_minimum": True, "exclusive_maximum": True}
COUNT = {"minimum": 1, "integer": True}
INDEX = {"minimum": 0, "integer": True}
#: A seed every generator takes (numpy's legacy seeding stops at 2**32 - 1).
SEED = {"minimum": 0, "maximum": 2**32 - 1, "integer": True}


def check_fields(config: object, rules: dict[str, dict[str, object]]) -> None:
    """Apply :func:`check_number` to each field of a dataclass ``config`` named in ``rules``.

    Errors name the field as ``ClassName.field``, e.g. ``PALConfig.lr_users=-0.1 is invalid;
    use a finite number > 0``.
    """
    owner = type(config).__name__
    for name, rule in rules.items():
        check_number(getattr(config, name), f"{owner}.{name}", **rule)  # type: ignore[arg-type]


def check_lengths(max_length: object, max_prompt_length: object, where: str = "") -> None:
    """Raise :class:`ConfigError` unless ``0 <= max_prompt_length < max_length`` (integers), so
    that every completion keeps at least one token (else all log-probs and margins are 0)."""
    prefix = f"{where}." if where else ""
    check_number(max_length, f"{prefix}max_length", minimum=1, integer=True)
    check_number(max_prompt_length, f"{prefix}max_prompt_length", minimum=0, integer=True)
    if not max_prompt_length < max_length:  # type: ignore[operator]
        raise ConfigError(
            f"{prefix}max_prompt_length={max_prompt_length!r} must be in [0, max_length="
            f"{max_length!r}): the completion needs at least one token; use the lengths the "
            "model was trained with")


def check_names(value: object, field: str, error: type[Exception] = ConfigError) -> list[str]:
    """``value`` as a list of column / attribute names: a single name ``"age"`` is ``["age"]``
    (never its characters); anything but a name or a list of names raises ``error``."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value):
        return list(value)
    raise error(f"{field}={value!r} is invalid; use a name or a list of names, e.g. "
                "[attr.age, attr.education]")


def check_numbers(values: object, field: str, **rule: object) -> tuple[float | int, ...]:
    """``values`` (a list of numbers) as a tuple, each checked by :func:`check_number` with
    ``rule`` and named ``field[i]``; anything but a list or tuple raises :class:`ConfigError`."""
    if not isinstance(values, list | tuple):
        raise ConfigError(f"{field}={values!r} is invalid; use a list of numbers, e.g. [1, 2]")
    return tuple(check_number(v, f"{field}[{i}]", **rule)  # type: ignore[arg-type]
                 for i, v in enumerate(values))
