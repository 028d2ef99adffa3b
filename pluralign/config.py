"""The one config reader and the one command-line grammar of every ``pluralign`` command.

Every command is described by one dataclass (its *config*; sections are nested dataclasses) and
reads it the same way::

    pluralign COMMAND [--config FILE] [key=value ...] --output-dir DIR

``--config`` is a YAML mapping of the dataclass's fields; each ``key=value`` override (dotted keys
for sections, values parsed as YAML: ``training.learning_rate=1e-5``) is applied on top; and
``--output-dir`` sets the field ``output_dir``. The result is built once by :func:`build_config`,
which refuses unknown keys naming them, and ``COMMAND --help`` lists every field with its help
(:func:`describe_fields`, in the spirit of ``transformers.HfArgumentParser``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import enum
import inspect
import os
import re
import sys
import textwrap
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from pluralign.errors import ConfigError
from pluralign.io import check_output_dir, parse_yaml_value, read_yaml_mapping

C = TypeVar("C")

#: Unknown-key errors list the valid fields only when there are at most this many.
_LIST_LIMIT = 30


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # a forward reference that cannot be resolved: no nesting
        return {}


def _dataclass_type(hint: Any) -> type | None:
    """The dataclass inside ``hint`` (``X`` or ``X | None``), else ``None``."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return _dataclass_type(inner[0])
    return None


def config_from_dict(cls: type[C], values: Mapping[str, Any] | None, where: str = "config") -> C:
    """Build dataclass ``cls`` from a mapping, sections (nested dataclass fields) included.

    Unknown keys raise :class:`ConfigError` naming them and ``where``; a section given as a
    scalar fills the section's ``SHORTHAND`` field if it declares one (``model: PATH`` means
    ``model: {name_or_path: PATH}``). Invalid values raise the dataclass's own ``ConfigError``;
    a ``ValueError`` of a foreign dataclass (``TrainingArguments``) becomes one.
    """
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        shorthand = getattr(cls, "SHORTHAND", None)
        if shorthand is None:
            raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, "
                              f"got {values!r}")
        values = {shorthand: values}
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    if unknown:
        valid = (f"valid: {', '.join(sorted(names))}" if len(names) <= _LIST_LIMIT
                 else "`--help` lists the valid fields")
        raise ConfigError(f"{where}: unknown option(s) {', '.join(unknown)}; {valid}")
    hints = _hints(cls)
    kwargs = {}
    for key, value in values.items():
        section = _dataclass_type(hints.get(key))
        if section is not None and not dataclasses.is_dataclass(value) and value is not None:
            value = config_from_dict(section, value, f"{where}.{key}")
        _check_scalar_type(hints.get(key), value, f"{where}: {key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _check_scalar_type(hint: Any, value: Any, where: str) -> None:
    """Refuse a non-text value for a ``str`` / ``str | None`` field and a non-boolean for a
    ``bool`` field (numbers are checked by each config's own rules, see
    :mod:`pluralign.validation`), so ``tokenizer=.nan`` fails here, not as a TypeError later."""
    if value is None:
        return
    args = set(typing.get_args(hint)) if typing.get_origin(hint) in (
        typing.Union, types.UnionType) else {hint}
    if args in ({str}, {str, type(None)}) and not isinstance(value, str):
        raise ConfigError(f"{where}={value!r} is invalid; use a text value (a name or a path)")
    if args == {bool} and not isinstance(value, bool):
        raise ConfigError(f"{where}={value!r} is invalid; use true or false")


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """Set ``values[a][b]... = value`` for the dotted ``key`` ``a.b...`` (sections are created)."""
    *parents, last = key.split(".")
    node = values
    for part in parents:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part!r} is not a section")
    node[last] = value


def apply_overrides(values: Mapping[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """A copy of ``values`` with ``key=value`` overrides applied (dotted keys reach sections,
    values are parsed as YAML, so ``lr=3e-3`` is a number and ``methods=[dpo]`` a list)."""
    out = copy.deepcopy(dict(values))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key or key.startswith("-"):
            raise ConfigError(f"override {item!r} is not of the form key=value")
        set_dotted(out, key, parse_yaml_value(raw, f"override {item!r}"))
    return out


def _sections_as_mappings(cls: type, values: Any) -> Any:
    """``values`` with every scalar section written as a mapping of its ``SHORTHAND`` field, so
    that a dotted override can reach into it."""
    if not isinstance(values, Mapping):
        return values
    hints = _hints(cls)
    out = dict(values)
    for key, value in values.items():
        section = _dataclass_type(hints.get(key))
        if section is None or value is None:
            continue
        if not isinstance(value, Mapping) and getattr(section, "SHORTHAND", None):
            value = {section.SHORTHAND: value}
        out[key] = _sections_as_mappings(section, value)
    return out


def _seed_mapping_defaults(cls: type, values: dict[str, Any], parts: list[str]) -> None:
    """Before a dotted override reaches into a field that ``values`` does not set, copy the
    field's default into ``values``, so that the override changes one entry of the default
    instead of replacing it: one entry of a default mapping (``methods.DPO.beta=0.2``), or one
    field of a section whose default is not its class's own (an experiment's ``training``
    section with its own learning rate; ``training.num_train_epochs=1`` keeps that rate)."""
    if len(parts) < 2 or not dataclasses.is_dataclass(cls):
        return
    field = next((f for f in dataclasses.fields(cls) if f.name == parts[0] and f.init), None)
    if field is None:
        return
    section = _dataclass_type(_hints(cls).get(field.name))
    if section is not None:
        node = values.get(field.name)
        if node is None:
            node = values[field.name] = _section_default(section, field)
        if isinstance(node, dict):
            _seed_mapping_defaults(section, node, parts[1:])
    elif field.name not in values:
        default = _default(field)
        if isinstance(default, Mapping):
            values[field.name] = copy.deepcopy(dict(default))


def _section_default(section: type, field: dataclasses.Field) -> dict[str, Any]:
    """The values of a section field's default where it differs from ``section()`` (else {})."""
    default = _default(field)
    if not dataclasses.is_dataclass(default) or isinstance(default, type):
        return {}
    try:
        if default == section():
            return {}
    except (ConfigError, TypeError, ValueError):  # the section has no defaults of its own
        pass
    return config_values(default)


def _is_training_arguments(value: Any) -> bool:
    transformers = sys.modules.get("transformers")  # loaded wherever such a value exists
    return transformers is not None and isinstance(value, transformers.TrainingArguments)


def _yaml_value(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


#: TrainingArguments fields that, left unset, are filled from the environment (disable_tqdm from
#: the logging level at construction): never recorded, or a record would depend on when it was
#: made. (Runs set them themselves: an experiment's ``progress``.)
_ENVIRONMENT_FIELDS = frozenset({"disable_tqdm"})


def changed_fields(section: Any) -> dict[str, Any]:
    """The fields of dataclass ``section`` that differ from its class's defaults, less those the
    others imply (``section`` rebuilt without them is equal): what a user set. For a
    ``transformers.TrainingArguments`` (a hundred-odd fields, most of them the Trainer's
    plumbing) this is the short mapping a recipe would have written."""
    cls = type(section)
    default = cls()
    names = [f.name for f in dataclasses.fields(cls)
             if f.init and f.name not in _ENVIRONMENT_FIELDS]
    values = {n: getattr(section, n) for n in names if getattr(section, n) != getattr(default, n)}
    for name in list(values):
        trial = {k: v for k, v in values.items() if k != name}
        try:
            implied = _same_fields(cls(**trial), section, names)
        except (ConfigError, TypeError, ValueError):
            implied = False
        if implied:
            values = trial
    return {k: _yaml_value(v) for k, v in values.items()}


def _same_fields(a: Any, b: Any, names: list[str]) -> bool:
    return all(getattr(a, n) == getattr(b, n) for n in names)


def config_values(config: Any) -> dict[str, Any]:
    """The mapping :func:`config_from_dict` rebuilds dataclass ``config`` from (what a run folder
    records as ``config.yaml``, readable back by ``--config``): every field, sections as
    mappings, a ``TrainingArguments`` section as its :func:`changed_fields`."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        value = getattr(config, f.name)
        if _is_training_arguments(value):
            value = changed_fields(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = config_values(value)
        out[f.name] = _yaml_value(value)
    return out


def read_config(cls: type, path: str | os.PathLike[str] | None = None,
                overrides: list[str] | None = None,
                output_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The mapping a command's config is built from: ``path`` (YAML, optional) with ``overrides``
    applied in order and ``output_dir`` set (at ``cls.OUTPUT_DIR``, default ``output_dir``).

    A section given as a scalar (``data=pairs.jsonl``) is read as its ``SHORTHAND`` field, so a
    later dotted override reaches into it (``data=pairs.jsonl data.options.limit=10``)."""
    values = read_yaml_mapping(path, f"{cls.__name__} fields") if path is not None else {}
    values = _sections_as_mappings(cls, values)
    for item in overrides or []:  # one at a time: `model=DIR model.ref_model=REF` reaches in
        _seed_mapping_defaults(cls, values, item.partition("=")[0].split("."))
        values = _sections_as_mappings(cls, apply_overrides(values, [item]))
    if output_dir is not None:
        check_output_dir(output_dir)
        set_dotted(values, getattr(cls, "OUTPUT_DIR", "output_dir"), os.fspath(output_dir))
    return values


def build_config(cls: type[C], path: str | os.PathLike[str] | None = None,
                 overrides: list[str] | None = None,
                 output_dir: str | os.PathLike[str] | None = None) -> C:
    """Read ``path`` (YAML, optional), apply ``overrides`` and ``output_dir``, build ``cls``."""
    values = read_config(cls, path, overrides, output_dir)
    return config_from_dict(cls, values, str(path or cls.__name__))


# ------------------------------------------------------------------------------------ help
def _docstring_help(cls: type) -> dict[str, str]:
    """``name: text`` entries of the Google-style ``Attributes:`` docstring sections of ``cls``
    and its bases (the nearest class wins)."""
    out: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        out.update(_own_docstring_help(base))
    return out


def _own_docstring_help(cls: type) -> dict[str, str]:
    doc = cls.__dict__.get("__doc__") or ""
    doc = inspect.cleandoc(doc)
    out: dict[str, str] = {}
    current = None
    for line in doc.splitlines():
        match = re.match(r"^ {4}(\w+)(?: \([^)]*\))?: (.*)$", line)
        if match:
            current = match.group(1)
            out[current] = match.group(2).strip()
        elif current and line.startswith("        "):
            out[current] += " " + line.strip()
        else:
            current = None
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "required"


def _type_text(hint: Any) -> str:
    """A field's type as a reader writes it: ``int``, ``str | None``, ``dict[str, Any]``."""
    if hint is None:
        return ""
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return re.sub(r"\b(?:\w+\.)+(\w+)", r"\1", str(hint))


def describe_fields(cls: type, prefix: str = "", indent: int = 2,
                    only: typing.Collection[str] | None = None,
                    skip: typing.Collection[str] = (), defaults: Any = None) -> list[str]:
    """One help entry per field of dataclass ``cls`` (sections recursively, as dotted keys):
    ``name: type = default`` and the help from the field's ``metadata["help"]`` or the class
    docstring; ``only``/``skip`` select fields by name. A section's defaults are its field's
    default instance where it has one (an experiment's ``training`` section shows the
    experiment's learning rate, not the class's); ``defaults`` is that instance.

    A mapping field whose keys depend on another field declares
    ``metadata={"variants": fn, "variant_of": "format"}``, ``fn()`` returning ``{name:
    dataclass}``: its keys are listed below it, those every variant takes once, then each
    variant's own (``data.options`` of the loader formats)."""
    documented = _docstring_help(cls)
    hints = _hints(cls)
    pad = " " * indent
    own = _shown_defaults(defaults)
    lines: list[str] = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init or f.name.startswith("_") or f.name in skip or (
                only is not None and f.name not in only):
            continue
        section = _dataclass_type(hints.get(f.name))
        if section is not None:
            lines.append(f"{pad}{prefix}{f.name}.*   ({section.__name__}) "
                         f"{documented.get(f.name, '')}".rstrip())
            value = getattr(defaults, f.name) if defaults is not None else _default(f)
            lines += describe_fields(section, f"{prefix}{f.name}.", indent,
                                     defaults=value if dataclasses.is_dataclass(value) else None)
            continue
        text = f.metadata.get("help") or documented.get(f.name, "")
        kind = _type_text(hints.get(f.name))
        lines.append(f"{pad}{prefix}{f.name}{': ' + kind if kind else ''} = "
                     f"{own.get(f.name, _default(f))!r}")
        lines += textwrap.wrap(text, width=96, initial_indent=pad + " " * 4,
                               subsequent_indent=pad + " " * 4)
        if "variants" in f.metadata:
            lines += _describe_variants(f.metadata["variants"](), f.metadata.get(
                "variant_of", "variant"), f"{prefix}{f.name}.", indent + 2)
    return lines


def _describe_variants(variants: Mapping[str, type], what: str, prefix: str,
                       indent: int) -> list[str]:
    """The keys of a mapping field per variant (see :func:`describe_fields`)."""
    by_class: dict[type, list[str]] = {}
    for name, cls in variants.items():
        by_class.setdefault(cls, []).append(name)
    names = [{f.name for f in dataclasses.fields(c)} for c in by_class]  # type: ignore[arg-type]
    common = set.intersection(*names) if names else set()
    pad = " " * indent
    first = next(iter(by_class), None)
    lines = []
    if common and first is not None:
        lines.append(f"{pad}every {what}:")
        lines += describe_fields(first, prefix, indent + 2, only=common)
    for cls, labels in by_class.items():
        own = describe_fields(cls, prefix, indent + 2, skip=common)
        if own:
            plural = "s" if len(labels) > 1 else ""
            lines.append(f"{pad}{what}{plural} {', '.join(labels)} ({cls.__name__}):")
            lines += own
    return lines


def _shown_defaults(defaults: Any) -> dict[str, Any]:
    """The fields of a section's default instance that differ from the class defaults."""
    if defaults is None:
        return {}
    if _is_training_arguments(defaults):
        return changed_fields(defaults)
    return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)
            if f.init and getattr(defaults, f.name) != _default(f)}


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, examples: str = "",
                         config_default: str | None = None) -> None:
    """Give ``parser`` the grammar ``[--config FILE] [key=value ...] --output-dir DIR`` for
    config dataclass ``cls``; its ``--help`` ends with every field of ``cls`` and its help."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.set_defaults(config_class=cls)
    parser.add_argument("--config", default=config_default, metavar="FILE",
                        help=f"YAML file of {cls.__name__} fields"
                        + (" (default: %(default)s)" if config_default else ""))
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help="run folder to write (sets output_dir)")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                        help="override a field (dotted keys for sections; YAML values)")
    fields_help = "\n".join(describe_fields(cls))
    parser.epilog = (f"{examples.rstrip()}\n\n" if examples else "") + (
        f"{cls.__name__} fields (set as key=value or in --config):\n{fields_help}")


def config_from_args(cls: type[C], args: argparse.Namespace) -> tuple[C, dict[str, Any]]:
    """The config of a command parsed with :func:`add_config_arguments`, and the mapping it was
    built from (what the run folder records as ``config.yaml``)."""
    values = read_config(cls, args.config, args.overrides, args.output_dir)
    return config_from_dict(cls, values, str(args.config or cls.__name__)), values
