"""The examples in the ``--help`` of the data and pal commands run as printed (issue 21), in
order, from a folder holding the repository's tests/ and configs/ (examples marked "needs
network" are skipped)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pluralign.cli import main

ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")


def help_examples(command: list[str], capsys) -> list[list[str]]:
    """The ``pluralign ...`` command lines of the Examples block of ``command --help``
    (backslash continuations joined, comments dropped)."""
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = capsys.readouterr().out
    block = text.split("Examples:\n", 1)[1].split("\n\n", 1)[0]
    lines = re.sub(r"\\\n\s*", "", block).splitlines()
    return [shlex.split(line, comments=True)[1:] for line in lines
            if "needs network" not in line]


def _run_examples(commands: list[list[str]], folder: Path, monkeypatch, capsys) -> int:
    monkeypatch.chdir(folder)
    for name in ("tests", "configs"):
        (folder / name).symlink_to(ROOT / name)
    ran = 0
    for command in commands:
        for argv in help_examples(command, capsys):
            code = main(argv)
            err = capsys.readouterr().err
            assert code == 0, (argv, err)
            ran += 1
    return ran


def test_data_help_examples_run(tmp_path, monkeypatch, capsys):
    commands = [["data", "inspect"], ["data", "synthetic"], ["data", "export"]]
    assert _run_examples(commands, tmp_path, monkeypatch, capsys) == 14
    assert (tmp_path / "exports" / "ca" / "train" / "dataset_info.json").is_file()
    assert (tmp_path / "runs" / "hh-again" / "metrics.json").is_file()


@pytest.mark.slow
def test_pal_help_examples_run(tmp_path, monkeypatch, capsys):
    commands = [["pal", "train"], ["pal", "eval"], ["pal", "adapt"]]
    assert _run_examples(commands, tmp_path, monkeypatch, capsys) == 11
    assert (tmp_path / "runs" / "pal-adapted" / "adapted_users.json").is_file()
