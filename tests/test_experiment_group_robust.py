"""The group-robust experiment at a very small size: outputs' structure, weights move."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pluralign.config import build_config, config_values
from pluralign.errors import ConfigError
from pluralign.experiments.group_robust import GroupRobustConfig, run_group_robust

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "group_robust.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_small_run_writes_the_metrics_report_and_plots(tmp_path):
    cfg = build_config(GroupRobustConfig, CONFIG, [
        "data.population.n_annotators=24", "data.population.pairs_per_annotator=6",
        "data.population.n_prompts=10", "model.config={hidden_size: 32, intermediate_size: 64}",
        "training.num_train_epochs=1", "n_boot=50",
        "methods={DPO: {objective: dpo}, GR-DPO: {objective: group_dpo, group_by: user_type, "
        "group_step_size: 0.5, group_init: proportional}}"], output_dir=tmp_path)
    metrics = run_group_robust(cfg)
    # the run folder's config.yaml is read back by --config as the same configuration
    assert config_values(build_config(GroupRobustConfig, tmp_path / "config.yaml")) == \
        config_values(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert set(saved["worst_group_accuracy"]) == {"DPO", "GR-DPO"}
    gain = saved["worst_group_accuracy_gain"]
    assert gain["ci"][0] <= gain["estimate"] <= gain["ci"][1]
    assert gain["estimate"] == pytest.approx(saved["worst_group_accuracy"]["GR-DPO"]["mean"]
                                             - saved["worst_group_accuracy"]["DPO"]["mean"])
    for name in ("config.yaml", "report.html", "group_accuracy.png", "group_weights.png"):
        assert (tmp_path / name).stat().st_size > 0
    weights = metrics["group_weights"]["weights"]
    assert len(weights["minority"]) == len(metrics["group_weights"]["step"]) > 1
    # starts at the minority's training share (< 1/2) and moves up toward it
    assert weights["minority"][0] < 0.5
    assert weights["minority"][-1] > weights["minority"][0]
    assert 0 < metrics["conflict_share"]["test_pairs"] < 1


def test_shipped_config_is_the_default():
    assert config_values(build_config(GroupRobustConfig, CONFIG)) == \
        config_values(GroupRobustConfig())


def test_configs_without_the_compared_methods_fail():
    with pytest.raises(ConfigError, match="must include"):
        GroupRobustConfig(methods={"DPO": {"objective": "dpo"}})
    with pytest.raises(ConfigError, match="majority_share"):
        GroupRobustConfig(majority_share=0.3)


def test_listed_and_configured_through_the_experiment_command(tmp_path, capsys):
    from pluralign.cli import main

    assert main(["experiment"]) == 0
    assert "group_robust" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["experiment", "group_robust", "--help"])
    text = capsys.readouterr().out
    assert "majority_share" in text and "--output-dir DIR" in text
    assert main(["experiment", "group_robust", "majority_share=0.3",
                 "--output-dir", str(tmp_path)]) == 2
    assert "majority_share" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("seed=abc", r"GroupRobustConfig.seed='abc' is invalid"),
    ("threads=0", r"GroupRobustConfig.threads=0 is invalid"),
    ("n_boot=.inf", r"GroupRobustConfig.n_boot=inf is invalid"),
    ("training.max_length=5", r"max_prompt_length=28 must be in \[0, max_length=5\)"),
    ("conflict_share=1.5", r"GroupRobustConfig.conflict_share=1.5 is invalid"),
    ("data.test_size=x", r"data.test_size='x' is invalid")])
def test_bad_settings_are_one_line_errors(override, message, tmp_path, capsys):
    """seed=abc reached numpy and ended in a raw 'ValueError: unrecognized seed string'."""
    import re

    from pluralign.cli import main

    assert main(["experiment", "group_robust", override,
                 "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pluralign experiment: error: ")
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "out").exists()
