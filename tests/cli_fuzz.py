"""Hypothesis helpers for CLI robustness tests (issue 15): run ``pluralign.cli.main`` in-process on
generated configs in the one grammar ``pluralign COMMAND [--config FILE] [key=value ...]
--output-dir DIR`` and check the outcome is exit 0, or exit 2 with a one-line error of the command
itself (never an argparse usage error, never a traceback); files a run writes follow the umask.

Usage in a test module (tests/ is on sys.path, see conftest.py)::

    from cli_fuzz import CLI_SETTINGS, assert_clean, config_cases

    @CLI_SETTINGS
    @given(case=config_cases({"floor": field_values(), "link": st.sampled_from(["bt", "x"])}))
    def test_x(case, tmp_path_factory):
        assert_clean(["nbc", *case.argv(tmp_path_factory.mktemp("c"))], out_dir)
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from pluralign.cli import main
from pluralign.config import set_dotted

#: Examples per property test (each runs a whole command), no deadline (commands read files,
#: plot and train tiny models).
MAX_EXAMPLES = 25
CLI_SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow,
                                               HealthCheck.function_scoped_fixture])

#: YAML spellings that have broken config parsers: wrong types, NaN/inf, overflow, containers.
TRICKY_YAML = ("abc", "ten", ".nan", ".inf", "-.inf", "-1", "0", "1.5", "-0.0", "1e309", "1e-3",
               "[1, 2]", "{a: 1}", "null", "true", "''", "5", "2**31", "0x10", "~", "[a",
               "{a: [", "'x", "@x", "%", "a: b")


def yaml_values() -> st.SearchStrategy[str]:
    """Text of one YAML value as written after ``key=`` on a command line (valid YAML or not)."""
    return st.one_of(
        st.sampled_from(TRICKY_YAML),
        st.integers(-3, 8).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=6),
    )


def field_values() -> st.SearchStrategy[Any]:
    """A value of a config field as a YAML file holds it: small numbers (sizes stay cheap), NaN,
    ±inf, huge floats, strings, booleans, null, lists and mappings."""
    scalars = st.one_of(
        st.integers(-3, 8), st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.5, 1e-3, 1e308, -0.0]), st.booleans(), st.none(),
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=5),
    )
    return st.one_of(scalars, st.lists(scalars, max_size=3),
                     st.dictionaries(st.sampled_from(["a", "r", "hidden_size"]), scalars,
                                     max_size=2))


@dataclass
class ConfigCase:
    """One generated configuration: fields written to ``--config`` and ``key=value`` texts."""

    in_file: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)

    def argv(self, folder: Path, fixed: Sequence[str] = ()) -> list[str]:
        """``--config FILE key=value ...`` (FILE written into ``folder``) plus ``fixed``."""
        nested: dict[str, Any] = {}
        # copies: a section taken from a shared recipe (test_training_cli.TINY) must not receive
        # the generated values of its dotted sub-keys, or later tests see them
        for key, value in copy.deepcopy(self.in_file).items():
            set_dotted(nested, key, value)
        path = folder / "config.yaml"
        path.write_text(yaml.safe_dump(nested, allow_unicode=True), encoding="utf-8")
        return ["--config", str(path), *self.overrides, *fixed]


@st.composite
def config_cases(draw: Any, fields: Mapping[str, st.SearchStrategy[Any]]) -> ConfigCase:
    """A :class:`ConfigCase` over the dotted ``fields``: each chosen field goes either into the
    config file (a generated value) or onto the command line (generated YAML text)."""
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=4))
    case = ConfigCase()
    for key in chosen:
        if draw(st.booleans()):
            case.in_file[key] = draw(fields[key])
        else:
            case.overrides.append(f"{key}={draw(yaml_values())}")
    return case


@dataclass
class CliResult:
    """Exit status and captured output of one in-process ``pluralign`` run."""

    code: int
    out: str
    err: str


def run_cli(argv: Sequence[str]) -> CliResult:
    """Run ``pluralign ARGV`` in-process; argparse's ``SystemExit`` becomes the exit code and any
    other exception fails the calling test with the traceback the user would have seen."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 2
    except BaseException:  # noqa: BLE001 - reported as a failure, never swallowed
        raise AssertionError(f"pluralign {' '.join(argv)} raised instead of exiting 2:\n"
                             f"{traceback.format_exc()}") from None
    return CliResult(int(code), out.getvalue(), err.getvalue())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def assert_umask(folder: Path) -> None:
    """Every file under ``folder`` has the mode ``open()`` gives under the umask (issue 15 #11)."""
    wanted = 0o666 & ~_umask()
    for path in folder.rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == wanted, (path, oct(path.stat().st_mode))


def assert_clean(argv: Sequence[str], out_dir: Path | None = None) -> CliResult:
    """Run ``argv``; assert exit 0 (then the files under ``out_dir`` follow the umask), or exit 2
    whose last stderr line is the command's own ``pluralign CMD: error: ...`` (an argparse usage
    error does not count: the generated grammar must be well formed)."""
    result = run_cli(argv)
    where = f"pluralign {' '.join(argv)}"
    assert result.code in (0, 2), f"{where}: exit {result.code}\n{result.err}"
    assert "Traceback (most recent call last)" not in result.err, f"{where}:\n{result.err}"
    assert "usage:" not in result.err, f"{where}: argparse rejected the grammar:\n{result.err}"
    if result.code == 2:
        last = result.err.strip().splitlines()[-1] if result.err.strip() else ""
        assert last.startswith(f"pluralign {argv[0]}") and ": error: " in last, (
            f"{where}: {result.err!r}")
    elif out_dir is not None and out_dir.exists():
        assert_umask(out_dir)
    return result
