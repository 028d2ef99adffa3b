"""Atomic file output: a crash or Ctrl-C mid-write never leaves a half-written file behind.

Everything pluralign writes into a run folder (metrics, tables, plots, caches, checkpoints' side
files) goes through :func:`atomic_path`: the content is written to a temporary file in the same
directory and moved into place with :func:`os.replace`, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pluralign.errors import ConfigError

#: The mode ``open()`` creates files with before the umask applies (mkstemp uses 0o600).
_CREATE_MODE = 0o666


def _current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_dir(path: str | os.PathLike[str], where: str = "--output-dir") -> Path:
    """``path`` as a run folder that can be created or written: not empty, not an existing file,
    and not below one; else :class:`ConfigError` naming it, before anything is computed."""
    text = os.fspath(path)
    if not text.strip():
        raise ConfigError(f"{where} is empty; name the run folder to write, e.g. runs/x")
    target = Path(text)
    existing = next(f for f in (target, *target.parents, Path(".")) if f.exists())
    if not existing.is_dir():
        raise ConfigError(f"{where} {text}: {existing} is a file, not a folder; choose another "
                          "run folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{where} {text}: {existing} is not writable; choose another run "
                          "folder")
    return target


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give the file ``path`` the mode ``open()`` would (0o666 less the umask): for files that
    another library writes through a private temporary file (transformers' model shards)."""
    os.chmod(path, _CREATE_MODE & ~_current_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, else delete it.

    The file ends up with the mode a plain ``open(path, "w")`` would give it (0o666 less the
    umask), not the private 0o600 of the temporary file.

    Example::

        with atomic_path("runs/x/plot.png") as tmp:
            fig.savefig(tmp, format="png")
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        follow_umask(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path`` and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON; NaN/inf are refused, never written as bad JSON."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


class _YAML12FloatLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` and ``5E+2`` as floats.

    PyYAML implements YAML 1.1, where a float needs a dot (``1.0e-3``); ``1e-3`` silently stays
    the *string* ``"1e-3"`` and then fails far from the config as "'>=' not supported between str
    and int". YAML 1.2 (and every user writing a learning rate) reads it as a number.
    """


_YAML12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """Parse YAML safely (no object construction), reading ``1e-3``-style numbers as floats."""
    return yaml.load(text, Loader=_YAML12FloatLoader)  # noqa: S506 - a SafeLoader subclass


def parse_yaml_value(text: str, where: str) -> Any:
    """:func:`parse_yaml` for one command-line value; invalid YAML raises :class:`ConfigError`
    naming ``where`` (e.g. ``"override 'pairs=[0'"``) instead of a multi-line parser error."""
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{where}: invalid YAML value ({problem}); put the value in quotes "
                          "to pass it as text") from None


def read_yaml_mapping(path: str | os.PathLike[str], expected: str) -> dict[str, Any]:
    """Read a YAML config file that must hold a mapping (an empty file is ``{}``).

    A missing or unreadable file, bytes that are not UTF-8, invalid YAML or a non-mapping top
    level raises :class:`ConfigError` naming the file; ``expected`` says what the mapping should
    hold (e.g. ``"PopulationConfig fields"``).
    """
    try:
        loaded = parse_yaml(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start}); save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of {expected} at the top level")
    return loaded
