"""Seeds as the unit: one folder per seed, finished seeds reused, a changed config refused."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from pluralign.config import config_values
from pluralign.errors import ConfigError
from pluralign.experiments.seeds import check_seed_list, run_seeds, seed_folder
from pluralign.runs import plain


@dataclass
class _Cfg:
    output_dir: str
    seed: int
    scale: float = 1.0


def _run(trained):
    def run(cfg):
        trained.append(cfg.seed)
        metrics = {"value": cfg.seed * cfg.scale, "config": plain(config_values(cfg))}
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "metrics.json").write_text(json.dumps(metrics))
        return metrics
    return run


def test_each_seed_gets_its_folder_and_finished_seeds_are_reused(tmp_path):
    trained, summaries = [], []

    def config(scale):
        return lambda s: _Cfg(str(seed_folder(tmp_path, s)), s, scale)

    first = run_seeds([0, 1], config(2.0), _run(trained), progress=False)
    assert trained == [0, 1] and {s: m["value"] for s, m in first.items()} == {0: 0.0, 1: 2.0}
    assert (tmp_path / "seed-1" / "metrics.json").is_file()
    done = run_seeds([0, 1, 2], config(2.0), _run(trained), progress=False,
                     after_seed=lambda d: summaries.append(sorted(d)))
    assert trained == [0, 1, 2]                       # 0 and 1 reused, not retrained
    assert list(done) == [0, 1, 2] and done[2]["value"] == 4.0
    assert summaries[-1] == [0, 1, 2]
    # a finished seed of another configuration is refused before anything trains
    with pytest.raises(ConfigError, match=r"seed-0 already holds .*\(scale differs\)"):
        run_seeds([3, 0], config(3.0), _run(trained), progress=False)
    assert trained == [0, 1, 2] and not (tmp_path / "seed-3").exists()


def test_an_unreadable_metrics_file_is_not_a_finished_seed(tmp_path):
    folder = seed_folder(tmp_path, 0)
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text("{truncated")
    trained = []
    run_seeds([0], lambda s: _Cfg(str(seed_folder(tmp_path, s)), s), _run(trained),
              progress=False)
    assert trained == [0]


@pytest.mark.parametrize(("seeds", "message"), [
    ([], "is invalid"), ([0, -1], "is invalid"), ([True], "is invalid"), ("0", "is invalid"),
    ([1, 1], "repeats a seed")])
def test_bad_seed_lists_are_one_line_errors(seeds, message):
    with pytest.raises(ConfigError, match=message):
        check_seed_list(seeds, "X")
    assert check_seed_list([2, 0], "X") == [2, 0]


@pytest.mark.parametrize("cls", ["group_robust.GroupRobustConfig", "replicate.ReplicateConfig"])
def test_resume_is_refused_with_overwrite_and_without_seeds(cls):
    import importlib

    module, name = cls.split(".")
    config = getattr(importlib.import_module(f"pluralign.experiments.{module}"), name)
    with pytest.raises(ConfigError, match="not both"):
        config(resume=True, overwrite=True)
    if "seeds" in {f.name for f in dataclasses.fields(config)} and module != "replicate":
        with pytest.raises(ConfigError, match="set seeds"):
            config(resume=True)
        assert config(resume=True, seeds=[0, 1]).resume
