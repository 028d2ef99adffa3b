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
    ("data.test_size=x", r"data.test_size='x' is invalid"),
    ("data.population.n_annotators=2", r"leaves 0 minority annotator\(s\); each group needs"),
    ("data.population.n_types=3", r"n_types=3: this experiment is defined for two groups"),
    ("methods.GR-DPO.group_step_size=.inf", r"group_step_size=inf is invalid"),
    ("methods.GR-DPO.group_by=5", r"group_by=5 is invalid; use a text value"),
    ("seeds=[0, 0]", r"seeds=\[0, 0\] repeats a seed"),
    ("seeds=[0, 1]|seed=2", r"seed=2 and seeds=\[0, 1\] both set")])
def test_bad_settings_are_one_line_errors(override, message, tmp_path, capsys):
    """seed=abc reached numpy and ended in a raw 'ValueError: unrecognized seed string'."""
    import re

    from pluralign.cli import main

    assert main(["experiment", "group_robust", *override.split("|"),
                 "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pluralign experiment: error: ")
    assert re.search(message, err[0]), err[0]
    assert not (tmp_path / "out").exists()


def test_group_by_nobody_has_fails_before_any_method_trains(tmp_path):
    cfg = build_config(GroupRobustConfig, CONFIG, [
        "data.population.n_annotators=24", "data.population.pairs_per_annotator=6",
        "data.population.n_prompts=10", "methods.GR-DPO.group_by=attr.nosuch"],
        output_dir=tmp_path / "out")
    with pytest.raises(ConfigError, match=r"methods.GR-DPO: .*no pair has 'nosuch'"):
        run_group_robust(cfg)
    assert not (tmp_path / "out").exists()


def test_one_group_in_the_training_pairs_is_refused():
    import datasets

    from pluralign.experiments.group_robust import _check_groupings

    cfg = GroupRobustConfig(methods={"DPO": {"objective": "dpo"}, "GR-DPO": {
        "objective": "group_dpo", "group_by": "attr.gender"}})
    train = datasets.Dataset.from_dict({"attributes": [{"gender": "female"}] * 3})
    with pytest.raises(ConfigError, match=r"group_by='attr.gender' has one group \(female\)"):
        _check_groupings(cfg, train)


def test_the_summary_over_seeds_is_scipys_t_interval_of_the_paired_differences():
    from scipy import stats

    from pluralign.experiments.group_robust import seed_summary

    worst = {0: (0.60, 0.66, 0.67), 1: (0.62, 0.70, 0.69), 2: (0.58, 0.61, 0.66)}
    average = {0: (0.77, 0.74, 0.73), 1: (0.78, 0.76, 0.75), 2: (0.76, 0.75, 0.72)}
    names = ("DPO", "GR-DPO", "Static-RW")
    done = {s: {"worst_group_accuracy": {m: {"mean": w}
                                         for m, w in zip(names, worst[s], strict=True)},
                "average_accuracy": {m: {"mean": a}
                                     for m, a in zip(names, average[s], strict=True)},
                "worst_group_accuracy_gain": {"estimate": worst[s][1] - worst[s][0]}}
            for s in worst}
    metrics = seed_summary(GroupRobustConfig(seeds=[0, 1, 2]), done)
    checks = {"worst_group_accuracy_gain": [worst[s][1] - worst[s][0] for s in worst],
              "worst_group_accuracy_gain_vs_static": [worst[s][1] - worst[s][2] for s in worst],
              "average_accuracy_cost": [average[s][0] - average[s][1] for s in worst]}
    for key, diffs in checks.items():
        low, high = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
        assert metrics[key]["estimate"] == pytest.approx(sum(diffs) / 3)
        assert metrics[key]["ci"] == pytest.approx([low, high])
        assert metrics[key]["n"] == 3
    one = seed_summary(GroupRobustConfig(seeds=[0]), {0: done[0]})
    assert one["worst_group_accuracy_gain"]["ci"] == [None, None]  # JSON has no NaN
