"""Issue 23 #6: inputs that ended in a raw traceback are one line naming the file or field and
the fix (exit 2): a damaged reward-model folder given to `pal eval`, `train data=null`, and a
training seed that is not a seed."""

from __future__ import annotations

import shutil

import pytest
import yaml
from cli_fuzz import run_cli
from test_training_cli import TINY

from pluralign.data.synthetic import PopulationConfig, make_population

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("pal")
    make_population(PopulationConfig(n_annotators=6, pairs_per_annotator=4, n_prompts=5,
                                     text_style="compact", seed=0)).save(root / "pop")
    common = [f"cache_dir={root / 'cache'}", "progress=false"]
    result = run_cli(["pal", "train", f"data={root / 'pop'}", "kind=bt", "bt.epochs=1",
                      *common, "--output-dir", str(root / "model")])
    assert result.code == 0, result.err
    return root, common


def _damage(folder, how):
    if how == "config not json":
        (folder / "config.json").write_text('{"class":')
    elif how == "config a list":
        (folder / "config.json").write_text("[1, 2]")
    elif how == "config not utf-8":
        (folder / "config.json").write_bytes(b"\xff\xfe{")
    elif how == "weights truncated":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        (folder / "model.safetensors").write_bytes(b"")


@pytest.mark.parametrize("how", ["config not json", "config a list", "config not utf-8",
                                 "weights truncated", "weights empty"])
def test_pal_eval_on_a_damaged_model_folder_is_one_line(reward_model, tmp_path, how):
    root, common = reward_model
    folder = tmp_path / "model"
    shutil.copytree(root / "model", folder)
    _damage(folder, how)
    result = run_cli(["pal", "eval", f"model={folder}", f"data={root / 'pop'}", *common])
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pluralign pal: error: "), result.err
    name = "config.json" if how.startswith("config") else "model.safetensors"
    assert f"{folder / name}: " in lines[0] and "pal train" in lines[0]


@pytest.mark.parametrize("command", ["train", "sft"])
@pytest.mark.parametrize("override, message", [
    ("data=null", "data is missing: name the preference data"),
    ("training.seed=abc", "seed='abc' is invalid; use an integer in [0, "),
    ("training.seed=-1", "seed=-1 is invalid"),
    ("training.seed=1e20", "seed=1e+20 is invalid"),
    ("training.seed=true", "seed=True is invalid"),
])
def test_recipe_data_and_seed_errors_are_one_line(tmp_path, command, override, message):
    recipe = TINY if command == "train" else {
        **TINY, "training": {k: v for k, v in TINY["training"].items()
                             if k not in ("objective", "strength")}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = run_cli([command, "--config", str(tmp_path / "r.yaml"), override,
                      "--output-dir", str(tmp_path / "run")])
    assert result.code == 2, result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.err
    assert not (tmp_path / "run").exists()
