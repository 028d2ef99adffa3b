"""The dispatcher: every registered command has a module with its two hooks and a --help."""

import importlib

import pytest

from pluralign.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_examples(name, capsys):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(getattr(module, f"run_{name}"))
    with pytest.raises(SystemExit) as exc:
        main([name, "--help"])
    assert exc.value.code == 0
    assert "example" in capsys.readouterr().out.lower()
