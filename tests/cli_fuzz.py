"""Hypothesis helpers for CLI robustness tests (issue 15): run ``pluralign.cli.main`` in-process on
generated bad values and check the outcome is exit 0, or exit 2 with a one-line error, never a
traceback.

Usage in a test module (tests/ is on sys.path, see conftest.py)::

    from cli_fuzz import CLI_SETTINGS, assert_clean, yaml_values

    @CLI_SETTINGS
    @given(value=yaml_values())
    def test_x(value):
        assert_clean(["data", "inspect", PATH, "--option", f"min_score_gap={value}"])
"""

from __future__ import annotations

import contextlib
import io
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from pluralign.cli import main

#: Few examples (each runs a whole command), no deadline (commands read files and plot).
CLI_SETTINGS = settings(max_examples=30, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow])

#: YAML spellings that have broken config parsers: wrong types, NaN/inf, overflow, containers.
TRICKY_YAML = ("abc", "ten", ".nan", ".inf", "-.inf", "-1", "0", "1.5", "-0.0", "1e309", "1e-3",
               "[1, 2]", "{a: 1}", "null", "true", "''", "5", "2**31", "0x10", "~")


def yaml_values() -> st.SearchStrategy[str]:
    """Text of one YAML scalar or container, as written after ``KEY=`` on a command line."""
    return st.one_of(
        st.sampled_from(TRICKY_YAML),
        st.integers(-(10**12), 10**12).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=6),
    )


def number_texts() -> st.SearchStrategy[str]:
    """Text given to a numeric flag (``--floor=...``): numbers, NaN/inf spellings and junk."""
    return st.one_of(
        st.sampled_from(("nan", "inf", "-inf", "-1", "0", "1e309", "abc", "", "1,5", "0.5")),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-(10**6), 10**6).map(str),
    )


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


def assert_clean(argv: Sequence[str]) -> CliResult:
    """Run ``argv`` and assert exit 0, or exit 2 ending in a ``pluralign ...: error:`` line."""
    result = run_cli(argv)
    where = f"pluralign {' '.join(argv)}"
    assert result.code in (0, 2), f"{where}: exit {result.code}\n{result.err}"
    assert "Traceback (most recent call last)" not in result.err, f"{where}:\n{result.err}"
    if result.code == 2:
        last = result.err.strip().splitlines()[-1] if result.err.strip() else ""
        assert last.startswith("pluralign") and "error:" in last, f"{where}: {result.err!r}"
    return result
