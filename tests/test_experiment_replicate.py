"""[VARIANCE-CLAIM] replicated over seeds: the paired interval and verdict against scipy's own
one-sample t-test, and a reduced end-to-end replication (tiny model) with per-seed reuse."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from pluralign.cli import main
from pluralign.config import build_config
from pluralign.errors import ConfigError
from pluralign.evaluation.replication import paired_seed_interval
from pluralign.experiments import replicate
from pluralign.experiments.demo import DemoConfig
from pluralign.experiments.replicate import ReplicateConfig


def _scipy_verdict(d, level):
    low, high = stats.ttest_1samp(d, 0.0).confidence_interval(level)
    return "supported" if low > 0 else "not supported" if high < 0 else "unresolved"


@pytest.mark.parametrize("d", [[0.4, 0.5, 0.6], [-0.9, -0.7, -1.2, -0.8], [0.3, -0.2, 0.5],
                               [0.02, 1.5, 0.1, 0.7, 0.3]])
@pytest.mark.parametrize("level", [0.9, 0.95])
def test_paired_seed_interval_is_scipys_one_sample_t_interval(d, level):
    got = paired_seed_interval(d, level)
    test = stats.ttest_1samp(d, 0.0)
    low, high = test.confidence_interval(level)
    assert got.n == len(d) and got.mean == pytest.approx(np.mean(d))
    assert (got.ci_low, got.ci_high) == pytest.approx((low, high), rel=1e-9)
    assert got.p_value == pytest.approx(test.pvalue, rel=1e-9)
    assert got.verdict == _scipy_verdict(d, level)


def test_verdicts_cover_the_three_outcomes_and_degenerate_inputs():
    assert paired_seed_interval([0.4, 0.5, 0.6]).verdict == "supported"
    assert paired_seed_interval([-0.4, -0.5, -0.6]).verdict == "not supported"
    assert paired_seed_interval([0.4, -0.5, 0.6]).verdict == "unresolved"
    one = paired_seed_interval([2.0])  # one run never decides
    assert one.verdict == "unresolved" and math.isnan(one.ci_low)
    assert paired_seed_interval([0.3, 0.3, 0.3]).verdict == "unresolved"  # no spread
    with pytest.raises(Exception, match="finite"):
        paired_seed_interval([0.1, float("nan")])


def test_replicate_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="seeds"):
        ReplicateConfig(seeds=[0, 0])
    with pytest.raises(ConfigError, match="set per seed"):
        ReplicateConfig(demo=["seed=3"])
    with pytest.raises(ConfigError, match="MixDPO-Gamma"):
        ReplicateConfig(demo=["methods={DPO: {objective: dpo}}"])


@pytest.mark.slow
def test_reduced_replication_reuses_finished_seeds_and_reports_the_interval(tmp_path, capsys,
                                                                            monkeypatch):
    demo = tmp_path / "demo.yaml"
    demo.write_text("""
threads: 1
model: {name_or_path: tiny, tokenizer_vocab_size: 300,
        config: {hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2,
                 intermediate_size: 64}}
data:
  source: synthetic
  population: {n_annotators: 10, pairs_per_annotator: 8, n_prompts: 10, n_types: 2,
               type_spread: 1.5, strength: gamma, shape: 1.0, rate: 1.0, text_style: compact}
  test_size: 0.3
sft: {learning_rate: 3.0e-3, num_train_epochs: 1, per_device_train_batch_size: 16,
      max_length: 48, max_prompt_length: 32, use_cpu: true}
training: {learning_rate: 3.0e-4, strength_learning_rate: 3.0e-2, num_train_epochs: 1,
           per_device_train_batch_size: 16, logging_steps: 1, max_length: 48,
           max_prompt_length: 32, use_cpu: true}
methods: {MixDPO-Gamma: {objective: mixdpo, strength: gamma}}
subgroups: [ctx.domain]
n_boot: 20
fit_boot: 0
""")
    out = tmp_path / "rep"
    trained = []
    train_and_compare = replicate.train_and_compare
    monkeypatch.setattr(replicate, "train_and_compare",
                        lambda cfg: trained.append(cfg.seed) or train_and_compare(cfg))
    base = ["experiment", "replicate", f"demo_config={demo}", "progress=false",
            "--output-dir", str(out)]
    assert main(base + ["seeds=[0]"]) == 0
    assert main(base + ["seeds=[0, 1, 2]", "resume=true"]) == 0
    assert trained == [0, 1, 2]  # seed 0 was reused, not retrained
    metrics = json.loads((out / "metrics.json").read_text())
    diffs = []
    for seed in (0, 1, 2):  # recomputed from each seed's own demo run folder
        final = json.loads((out / f"seed-{seed}" / "metrics.json").read_text())["final_strength"]
        cv2 = {k: final[k]["MixDPO-Gamma"]["beta_var"] / final[k]["MixDPO-Gamma"]["beta_mean"] ** 2
               for k in ("heterogeneous", "homogeneous")}
        diffs.append(math.log(cv2["heterogeneous"]) - math.log(cv2["homogeneous"]))
    assert [r["log_cv2_diff"] for r in metrics["seeds"]] == pytest.approx(diffs, rel=1e-6)
    low, high = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    interval = metrics["log_cv2_difference"]
    assert (interval["ci_low"], interval["ci_high"]) == pytest.approx((low, high), rel=1e-6)
    assert metrics["verdict"] == _scipy_verdict(diffs, 0.95)
    assert (out / "seeds.csv").is_file() and (out / "report.html").is_file()
    assert metrics["verdict"].upper() in capsys.readouterr().out
    # every config.yaml written is read back by --config: the summary's and each seed's
    assert build_config(ReplicateConfig, out / "config.yaml").seeds == [0, 1, 2]
    seed_config = build_config(DemoConfig, out / "seed-1" / "config.yaml")
    assert seed_config.seed == 1 and seed_config.data.test_size == 0.3
