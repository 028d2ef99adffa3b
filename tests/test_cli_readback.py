"""Every data and pal command's run folder is readable back by ``--config`` (issue 21): run the
command, rerun it with ``--config RUN/config.yaml --output-dir OTHER``, and get the same config
(and, every command being deterministic, the same metrics.json). Before, `pal train` wrote a
config.yaml that --config could not read (the model's config inside it, the data as a flag)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from pluralign.cli import main
from pluralign.config import build_config
from pluralign.data.commands import ExportConfig, InspectConfig, SyntheticConfig
from pluralign.data.splits import split_by_annotator
from pluralign.data.synthetic import make_population
from pluralign.reward.commands import PalAdaptConfig, PalEvalConfig, PalTrainConfig

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Seen and unseen users' pairs of a small population, a PAL model trained on the seen ones
    (through the command), and an embedding cache shared by every pal command here."""
    root = tmp_path_factory.mktemp("inputs")
    population = make_population(n_annotators=16, n_prompts=10, pairs_per_annotator=12,
                                 text_style="compact", seed=0)
    split = split_by_annotator(population.dataset, test_size=0.25, seed=0)
    split["train"].to_parquet(root / "seen.parquet")
    split["test"].to_parquet(root / "unseen.parquet")
    files = {"seen": str(root / "seen.parquet"), "unseen": str(root / "unseen.parquet"),
             "cache": str(root / "cache"), "model": str(root / "model")}
    assert main(["pal", "train", f"data={files['seen']}", "pal.epochs=2",
                 f"cache_dir={files['cache']}", "progress=false", "--output-dir",
                 files["model"]]) == 0
    return files


COMMANDS = {  # name -> (config class, argv given the inputs)
    "data inspect": (InspectConfig, lambda f: [
        "data", "inspect", f"data={FIXTURES / 'prism'}", "data.options.pairs=by_score",
        "by=[age]", "examples=1"]),
    "data synthetic": (SyntheticConfig, lambda f: [
        "data", "synthetic", "population.n_annotators=8", "population.pairs_per_annotator=3",
        "population.strength=gamma"]),
    "data export": (ExportConfig, lambda f: [
        "data", "export", f"data={FIXTURES / 'community_alignment.csv'}",
        "data.options.language=en", "to=parquet"]),
    "pal train": (PalTrainConfig, lambda f: [
        "pal", "train", f"data={f['seen']}", "data.test_size=0.2", "kind=bt", "bt.epochs=2",
        f"cache_dir={f['cache']}", "progress=false"]),
    "pal eval": (PalEvalConfig, lambda f: [
        "pal", "eval", f"model={f['model']}", f"data={f['unseen']}", "unknown=average",
        f"cache_dir={f['cache']}", "progress=false"]),
    "pal adapt": (PalAdaptConfig, lambda f: [
        "pal", "adapt", f"model={f['model']}", f"data={f['unseen']}", "n=3",
        f"cache_dir={f['cache']}", "progress=false"]),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_run_folder_config_reads_back(name, inputs, tmp_path):
    cls, argv = COMMANDS[name]
    first, second = tmp_path / "first", tmp_path / "second"
    assert main([*argv(inputs), "--output-dir", str(first)]) == 0
    assert main([*name.split(), "--config", str(first / "config.yaml"), "--output-dir",
                 str(second)]) == 0
    configs = [build_config(cls, run / "config.yaml") for run in (first, second)]
    assert [c.output_dir for c in configs] == [str(first), str(second)]
    assert dataclasses.replace(configs[0], output_dir=str(tmp_path)) == dataclasses.replace(
        configs[1], output_dir=str(tmp_path))
    written = [yaml.safe_load((run / "config.yaml").read_text()) for run in (first, second)]
    assert {**written[0], "output_dir": None} == {**written[1], "output_dir": None}
    if (first / "metrics.json").is_file():  # synthetic writes truth.json instead
        metrics = [json.loads((run / "metrics.json").read_text()) for run in (first, second)]
        metrics[0].pop("path", None), metrics[1].pop("path", None)  # export: the output file
        assert metrics[0] == metrics[1]
    if name == "data synthetic":
        assert (first / "pairs.parquet").read_bytes() == (second / "pairs.parquet").read_bytes()


def test_pal_train_config_is_not_the_models_config(inputs):
    """The saved model keeps its own config.json; config.yaml is the command's config."""
    model = Path(inputs["model"])
    command = yaml.safe_load((model / "config.yaml").read_text())
    saved = json.loads((model / "config.json").read_text())
    assert command["kind"] == "pal" and command["data"]["source"] == inputs["seen"]
    assert command["pal"]["epochs"] == 2 and command["bt"] is None
    assert saved["class"] == "PALRewardModel" and saved["config"]["epochs"] == 2


def test_pal_train_without_a_held_out_split(inputs, tmp_path, capsys):
    """data.test_size=0 trains on every pair and reports the training accuracy only."""
    assert main(["pal", "train", f"data={inputs['seen']}", "data.test_size=0", "kind=bt",
                 "bt.epochs=1", f"cache_dir={inputs['cache']}", "progress=false",
                 "--output-dir", str(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "heldout_accuracy" not in metrics and 0 <= metrics["train_accuracy"] <= 1
    assert "held-out" not in capsys.readouterr().out
