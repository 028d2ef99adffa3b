"""The run-folder guard (issue 23 #1): every command that writes a run folder refuses one that
already holds a run (exit 2, one line naming what is there and ``overwrite=true``) and leaves it
byte for byte as it was; ``overwrite=true`` replaces the folder as a whole (no stale file
survives), and a kill during an overwrite leaves the old run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from cli_fuzz import run_cli
from test_training_cli import TINY
from tiny_inputs import save_tiny_population_and_model

from pluralign import runs
from pluralign.runs import RunFolderError, run_folder, swap_folders

ROOT = Path(__file__).resolve().parents[1]
PRISM = Path(__file__).parent / "fixtures" / "prism"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A saved population, a tiny model folder, a survey, a margins table and train/sft recipes."""
    root = tmp_path_factory.mktemp("inputs")
    save_tiny_population_and_model(root)
    rng = np.random.default_rng(0)
    pd.DataFrame([{"question": f"Q{q}", "type": t, "answer": rng.choice(["A", "B", "C"]),
                   "weight": 1.0} for q in range(2) for t in ("Dem", "Rep") for _ in range(12)]
                 ).to_csv(root / "survey.csv", index=False)
    pd.DataFrame({"margin": rng.normal(0.5, 1.0, 60)}).to_csv(root / "margins.csv", index=False)
    (root / "train.yaml").write_text(yaml.safe_dump(TINY))
    sft = {**TINY, "training": {k: v for k, v in TINY["training"].items()
                                if k not in ("objective", "strength")}}
    (root / "sft.yaml").write_text(yaml.safe_dump(sft))
    return {"pop": root / "pop", "model": root / "model", "survey": root / "survey.csv",
            "margins": root / "margins.csv", "train": root / "train.yaml",
            "sft": root / "sft.yaml"}


#: name -> argv (without --output-dir) of a valid run of every command that writes a folder;
#: ``{x}`` is filled from :func:`inputs`. ``cheap`` ones are also run with overwrite=true.
COMMANDS: dict[str, tuple[list[str], bool]] = {
    "data synthetic": (["data", "synthetic", "population.n_annotators=4",
                        "population.pairs_per_annotator=2", "population.n_prompts=3",
                        "population.text_style=compact"], True),
    "data export": (["data", "export", "data={pop}"], True),
    "data inspect": (["data", "inspect", f"data={PRISM}", "examples=0"], True),
    "pal train": (["pal", "train", "data={pop}", "progress=false"], False),
    "pal eval": (["pal", "eval", "model={model}", "data={pop}", "progress=false"], False),
    "pal adapt": (["pal", "adapt", "model={model}", "data={pop}", "progress=false"], False),
    "evaluate": (["evaluate", "model={model}", "data={pop}", "n_boot=10", "max_length=48",
                  "max_prompt_length=32"], True),
    "diagnose": (["diagnose", "margins={margins}", "n_boot=5"], True),
    "nbc": (["nbc", "table={survey}"], True),
    "demo": (["demo", "--config", str(ROOT / "configs" / "demo.yaml")], False),
    "experiment demo": (["experiment", "demo", "--config", str(ROOT / "configs" / "demo.yaml")],
                        False),
    "experiment group_robust": (["experiment", "group_robust"], False),
    "experiment composition": (["experiment", "composition", "model={model}", "data={pop}",
                                "data.test_size=0.5", "attribute=attr.gender"], False),
    "experiment replicate": (["experiment", "replicate",
                              f"demo_config={ROOT / 'configs' / 'demo.yaml'}"], False),
    "experiment pal_benchmark": (["experiment", "pal_benchmark"], False),
    "experiment dahp": (["experiment", "dahp", "environment.num_states=4",
                         "environment.num_actions=6", "environment.shifts=[-1, 0, 1]",
                         "experiment.num_pairs=300", "experiment.num_paired=300",
                         "experiment.num_full=300", "experiment.steps=3",
                         "experiment.hidden=4"], True),
    "simulate": (["simulate", "experiment.steps=3"], False),
    "train": (["train", "--config", "{train}", "training.max_steps=1"], True),
    "sft": (["sft", "--config", "{sft}", "training.max_steps=1"], True),
}


def _argv(name: str, inputs: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [a.format(**inputs) for a in COMMANDS[name][0]] + ["--output-dir", str(out), *extra]


def _old_run(folder: Path) -> dict[str, bytes]:
    """Fill ``folder`` with a fake earlier run; return its content."""
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text('{"sentinel_of_the_old_run": true}\n')
    (folder / "strength.safetensors").write_bytes(b"old strength")
    (folder / "checkpoint-3").mkdir()
    (folder / "checkpoint-3" / "trainer_state.json").write_text("{}")
    return _content(folder)


def _content(folder: Path) -> dict[str, bytes]:
    return {os.fspath(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name", COMMANDS)
def test_a_folder_holding_a_run_is_refused_and_left_as_it_was(name, inputs, tmp_path):
    out = tmp_path / "run"
    before = _old_run(out)
    result = run_cli(_argv(name, inputs, out))
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "already holds a run (checkpoint-3, metrics.json, strength.safetensors)" in lines[0]
    assert "overwrite=true" in lines[0] and str(out) in lines[0]
    assert _content(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("name", [n for n, (_, cheap) in COMMANDS.items() if cheap])
def test_overwrite_replaces_the_whole_folder(name, inputs, tmp_path):
    out = tmp_path / "run"
    _old_run(out)
    result = run_cli(_argv(name, inputs, out, "overwrite=true"))
    assert result.code == 0, result.err
    names = {p.name for p in out.iterdir()}
    assert "config.yaml" in names or name.startswith("data synthetic")
    assert not names & {"checkpoint-3", "strength.safetensors"} or (
        name == "train" and (out / "strength.safetensors").read_bytes() != b"old strength")
    metrics = out / "metrics.json"
    assert not metrics.exists() or "sentinel_of_the_old_run" not in metrics.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging folder left
    recorded = (out / "config.yaml").read_text() if (out / "config.yaml").exists() else ""
    assert ".run.overwrite" not in recorded  # config.yaml names the final folder


def test_train_overwrite_with_another_objective_leaves_no_old_strength(inputs, tmp_path):
    out = tmp_path / "run"
    assert run_cli(_argv("train", inputs, out)).code == 0
    assert (out / "strength.safetensors").is_file()  # MixDPO Gamma: learned strength
    result = run_cli(_argv("train", inputs, out, "training.objective=dpo",
                           "training.strength=null", "overwrite=true"))
    assert result.code == 0, result.err
    assert not (out / "strength.safetensors").exists()
    assert yaml.safe_load((out / "config.yaml").read_text())["training"]["objective"] == "dpo"


def test_train_resume_is_not_an_overwrite(inputs, tmp_path):
    out = tmp_path / "run"
    assert run_cli(_argv("train", inputs, out)).code == 0
    result = run_cli(_argv("train", inputs, out, "training.max_steps=2", "resume=true"))
    assert result.code == 0, result.err
    assert {"checkpoint-1", "checkpoint-2"} <= {p.name for p in out.iterdir()}


def test_replicate_resume_reuses_the_folder_and_overwrite_contradicts_it(tmp_path):
    result = run_cli(["experiment", "replicate", "resume=true", "overwrite=true",
                      "--output-dir", str(tmp_path / "r")])
    assert result.code == 2 and "not both" in result.err


# ------------------------------------------------------------------------ the guard itself
def test_guard_writes_a_missing_or_empty_folder_in_place(tmp_path):
    with run_folder(tmp_path / "new") as out:
        assert out == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    with run_folder(tmp_path / "empty") as out:
        assert out == tmp_path / "empty"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"), run_folder(tmp_path / "file"):
        pass
    with pytest.raises(RunFolderError, match="overwrite='yes' is invalid"), \
            run_folder(tmp_path / "new", "yes"):
        pass


def test_a_failed_overwrite_leaves_the_old_run(tmp_path):
    before = _old_run(tmp_path / "run")
    with pytest.raises(KeyError), run_folder(tmp_path / "run", overwrite=True) as out:
        (out / "half.txt").write_text("new")
        raise KeyError("boom")
    assert _content(tmp_path / "run") == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_swap_replaces_the_folder(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(runs, "_exchange", lambda a, b: False)
    _old_run(tmp_path / "run")
    with run_folder(tmp_path / "run", overwrite=True) as out:
        (out / "metrics.json").write_text("new")
    assert _content(tmp_path / "run") == {"metrics.json": b"new"}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_the_old_run_left_aside_by_a_kill_between_two_renames_comes_back(tmp_path):
    before = _old_run(tmp_path / "run")
    os.rename(tmp_path / "run", tmp_path / ".run.replaced")  # the fallback's first rename
    with pytest.raises(RunFolderError, match="already holds a run"), \
            run_folder(tmp_path / "run"):
        pass
    assert _content(tmp_path / "run") == before


def test_swap_folders_exchanges_in_one_step(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "new").write_text("n")
    _old_run(tmp_path / "b")
    swap_folders(tmp_path / "a", tmp_path / "b")
    assert _content(tmp_path / "b") == {"new": b"n"} and not (tmp_path / "a").exists()


def _wait_for(path: Path, proc: subprocess.Popen, limit: float = 300) -> None:
    start = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - start < limit, f"{path} never appeared"
        time.sleep(0.2)


def test_kill_during_an_overwrite_leaves_the_old_run(inputs, tmp_path):
    """A train run killed (SIGKILL) after it has written into the staging folder: the run
    folder holds exactly the old run, and the next overwrite cleans the staging folder."""
    out = tmp_path / "run"
    before = _old_run(out)
    argv = [sys.executable, "-c", "import sys; from pluralign.cli import main; sys.exit(main())",
            *_argv("train", inputs, out, "overwrite=true",
                                                     "training.max_steps=100000")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(tmp_path / ".run.overwrite" / "checkpoint-1", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert _content(out) == before
    with run_folder(out, overwrite=True) as staging:
        assert list(staging.iterdir()) == []  # the killed run's staging folder was cleared
        (staging / "metrics.json").write_text("new")
    assert _content(out) == {"metrics.json": b"new"}


def test_overwrite_of_the_current_folder_is_refused(tmp_path, monkeypatch):
    before = _old_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path / "run")
    with pytest.raises(RunFolderError, match="holds the current folder"), \
            run_folder(".", overwrite=True):
        pass
    assert _content(tmp_path / "run") == before


def test_relative_run_folder_is_swapped_beside_itself(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _old_run(tmp_path / "run")
    with run_folder("run/", overwrite=True) as out:
        assert out.parent == tmp_path and out.name == ".run.overwrite"
        assert runs.published(str(out / "x.png")) == os.path.join("run", "x.png")
        (out / "metrics.json").write_text("new")
    assert _content(tmp_path / "run") == {"metrics.json": b"new"}
