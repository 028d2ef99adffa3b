"""Issue 15 #1 through the CLI: `train` / `sft` run folders know whose they are.

Before: a fresh run silently wrote into another run's folder, `resume=true` resumed that other
run's last checkpoint (exit 0, its model and metrics) or raised a raw state-dict error after
config.yaml had been overwritten, and `resume=true` with no checkpoint trained from scratch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from test_training_cli import TINY

from pluralign.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

SFT = {**TINY, "training": {k: v for k, v in TINY["training"].items()
                            if k not in ("objective", "strength")}}


def _recipe(folder: Path, recipe: dict) -> str:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Path]:
    """A finished 2-step `train` run and a finished 2-step `sft` run (checkpoints 1 and 2)."""
    root = tmp_path_factory.mktemp("finished")
    runs = {}
    for command, recipe in (("train", TINY), ("sft", SFT)):
        folder = root / command
        folder.mkdir()
        assert main([command, "--config", _recipe(folder, recipe),
                     "--output-dir", str(folder / "run")]) == 0
        runs[command] = folder
    return runs


def _copy(finished: Path, tmp_path: Path) -> tuple[str, Path]:
    shutil.copytree(finished, tmp_path / "copy")
    return str(tmp_path / "copy" / "recipe.yaml"), tmp_path / "copy" / "run"


@pytest.mark.parametrize("command", ["train", "sft"])
def test_fresh_run_refuses_a_non_empty_run_folder_unless_overwrite(finished, tmp_path, capsys,
                                                                   command):
    recipe, run = _copy(finished[command], tmp_path)
    before = (run / "config.yaml").read_bytes()
    assert main([command, "--config", recipe, "--output-dir", str(run),
                 "training.learning_rate=2e-3"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "resume=true" in err and "overwrite=true" in err
    assert len(err.splitlines()) == 1
    assert (run / "config.yaml").read_bytes() == before
    assert main([command, "--config", recipe, "--output-dir", str(run), "overwrite=true",
                 "training.learning_rate=2e-3", "training.max_steps=1"]) == 0
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"]  # old -2 gone
    assert yaml.safe_load((run / "config.yaml").read_text())["training"]["learning_rate"] == 2e-3


@pytest.mark.parametrize("command, change, key", [
    ("train", ["training.learning_rate=2e-3", "training.seed=1"], "training.learning_rate"),
    ("train", ["training.objective=dpo", "training.strength=null"], "training.objective"),
    ("train", ["model.config.hidden_size=16"], "model.config.hidden_size"),
    ("sft", ["training.learning_rate=2e-3"], "training.learning_rate"),
])
def test_resume_refuses_checkpoints_of_another_configuration_before_touching_config_yaml(
        finished, tmp_path, capsys, command, change, key):
    recipe, run = _copy(finished[command], tmp_path)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main([command, "--config", recipe, "--output-dir", str(run), "resume=true",
                 "training.max_steps=4", *change]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and key in err and len(err.splitlines()) == 1
    assert "Traceback" not in err
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # config.yaml and every checkpoint byte-identical


@pytest.mark.parametrize("command", ["train", "sft"])
def test_resume_with_nothing_to_resume_says_so(tmp_path, capsys, command):
    recipe = _recipe(tmp_path, TINY if command == "train" else SFT)
    for run in (tmp_path / "missing", tmp_path / "empty"):
        assert main([command, "--config", recipe, "--output-dir", str(run), "resume=true"]) == 2
        assert "nothing to resume" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()


def test_resume_of_the_same_configuration_extends_the_run(finished, tmp_path):
    recipe, run = _copy(finished["train"], tmp_path)
    assert main(["train", "--config", recipe, "--output-dir", str(run), "resume=true",
                 "training.max_steps=3"]) == 0
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3]  # steps 1-2 from the resume
    assert (run / "checkpoint-3").is_dir()


def test_resume_and_overwrite_are_documented_and_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "overwrite: bool = False" in out and "resume: bool = False" in out
    assert main(["train", "--config", _recipe(tmp_path, TINY), "--output-dir",
                 str(tmp_path / "run"), "resume=true", "overwrite=true"]) == 2
    assert "pick one" in capsys.readouterr().err
    assert main(["sft", "--config", _recipe(tmp_path, SFT), "--output-dir",
                 str(tmp_path / "run"), "overwrite=yes please"]) == 2
    assert "overwrite='yes please' is invalid" in capsys.readouterr().err
