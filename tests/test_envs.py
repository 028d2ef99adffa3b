"""The DAHP proximity environment ([DAHP, §7.2]): rewards, sampling, methods and the CLI."""

import json

import numpy as np
import pytest
import torch
import yaml

from pluralign.cli import main
from pluralign.envs import ProximityConfig, ProximityEnv
from pluralign.errors import ConfigError
from pluralign.experiments.dahp import (
    ExperimentConfig,
    fit_methods,
    policy_metrics,
    tabular_variance,
)

torch.set_num_threads(1)


def test_rewards_follow_the_paper():
    env = ProximityEnv()
    r = env.rewards
    assert r.shape == (3, 40, 40)
    # type 0: optimum at x − 10 (circular), scale 4, rate 0.075, floored at 0
    assert r[0, 15, 5] == 4.0
    assert r[0, 5, 35] == 4.0                           # 5 − 10 ≡ 35 (mod 40)
    assert r[0, 15, 9] == pytest.approx(4 * (1 - 0.075 * 4))
    assert r[0, 15, 1] == pytest.approx(4 * (1 - 0.075 * 4))   # distance 4 on the other side
    assert r[0, 15, 25] == 0.0                          # distance 20: floored
    assert r[1, 7, 7] == 1.5 and r[1, 7, 12] == pytest.approx(1.5 * 0.5)
    assert r[2, 0, 10] == 4.0 and r[2, 39, 9] == 4.0


def test_optimal_policy_and_dpo_limit():
    env = ProximityEnv()
    avg = (env.rewards[0] + env.rewards[1] + env.rewards[2]) / 3
    pi_star = np.exp(avg) / np.exp(avg).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(env.optimal_policy(), pi_star, rtol=1e-12)
    # average reward at δ=±10 is 4/3 > 7/6 at δ=0, NBC peaks at δ=0 (Fig. 4a)
    assert avg[0, 10] == pytest.approx(4 / 3) and avg[0, 0] == pytest.approx(7 / 6)
    assert np.argmax(env.nbc()[0]) == 0
    # the paper's infinite-data DPO optimum: TV 0.0437 from π*
    tv = 0.5 * np.abs(env.dpo_limit_policy() - pi_star).sum(axis=1)
    np.testing.assert_allclose(tv, 0.0437, atol=5e-5)


def small_env():
    return ProximityEnv(ProximityConfig(num_states=2, num_actions=3, shifts=(0, 1),
                                        rates=(0.5, 0.5), scales=(2.0, 3.0),
                                        type_probs=(0.3, 0.7)))


def test_single_label_sampling_matches_bradley_terry():
    env = small_env()
    pairs = env.sample_pairs(400_000, np.random.default_rng(0))
    assert np.mean(pairs.type == 1) == pytest.approx(0.7, abs=0.005)
    for x, a, b in [(0, 0, 1), (1, 2, 0)]:
        for u in range(2):
            sel = (pairs.state == x) & (pairs.type == u) & (
                ((pairs.chosen == a) & (pairs.rejected == b))
                | ((pairs.chosen == b) & (pairs.rejected == a)))
            wins = np.mean(pairs.chosen[sel] == a)
            want = 1 / (1 + np.exp(-(env.rewards[u, x, a] - env.rewards[u, x, b])))
            assert wins == pytest.approx(want, abs=4 / np.sqrt(sel.sum()))


def test_repeat_labels_share_the_annotator():
    env = small_env()
    paired = env.sample_paired(400_000, np.random.default_rng(1), repeat=True)
    first, second = paired.first, paired.second
    np.testing.assert_array_equal(first.type, second.type)
    np.testing.assert_array_equal(first.state, second.state)
    variance = tabular_variance(paired, 2, 3)
    exact = env.preference_variance(*np.indices((2, 3, 3)))
    np.testing.assert_allclose(variance.numpy(), exact, atol=0.01)
    independent = env.sample_paired(1000, np.random.default_rng(2))
    with pytest.raises(ConfigError, match="same item"):
        tabular_variance(independent, 2, 3)


def test_full_information_agreement():
    env = small_env()
    full = env.sample_full_information(300_000, np.random.default_rng(3))
    assert full.labels.shape == (300_000, 2)
    np.testing.assert_array_equal(full.agreement == 1, full.labels.all(axis=1))
    np.testing.assert_array_equal(full.agreement == -1, ~full.labels.any(axis=1))
    sel = (full.state == 0) & (full.first == 0) & (full.second == 1)
    p = 1 / (1 + np.exp(-(env.rewards[:, 0, 0] - env.rewards[:, 0, 1])))
    assert np.mean(full.agreement[sel] == 1) == pytest.approx(p.prod(), abs=0.02)


def test_rolled_view_centres_the_state():
    env = ProximityEnv()
    rolled = env.roll(env.rewards[1])
    assert (rolled[:, env.offsets() == 0] == 1.5).all()
    metrics = policy_metrics(env, env.optimal_policy())
    assert metrics["tv_to_optimal"] == 0 and abs(metrics["peak_offset"]) == 10


@pytest.fixture(scope="module")
def paper_run():
    return fit_methods(ProximityEnv(), ExperimentConfig(seed=0))


def test_must_show_dpo(paper_run):
    dpo = paper_run.metrics["dpo"]
    assert dpo["peak_offset"] == 0
    assert dpo["spearman_nbc"] >= 0.95
    assert dpo["tv_to_optimal"] == pytest.approx(0.044, abs=0.003)


def test_must_show_corrected_dpo(paper_run):
    dpo = paper_run.metrics["dpo"]["tv_to_optimal"]
    one = paper_run.metrics["corrected_alpha1"]["tv_to_optimal"]
    two = paper_run.metrics["corrected_alpha2"]["tv_to_optimal"]
    assert dpo > one > two
    assert one == pytest.approx(0.03, abs=0.004)
    assert 0.012 <= two <= 0.02


def test_must_show_agreement_and_indirect(paper_run):
    agreement = paper_run.metrics["agreement"]
    assert abs(agreement["peak_offset"]) == 10
    assert agreement["tv_to_optimal"] <= 0.015
    indirect = paper_run.metrics["indirect"]
    assert indirect["tv_to_optimal"] < paper_run.metrics["dpo"]["tv_to_optimal"]
    assert abs(indirect["peak_offset"]) == 10


def test_mlp_policy_matches_tabular_dpo():
    result = fit_methods(ProximityEnv(), ExperimentConfig(seed=0, policy="mlp",
                                                             methods=("dpo",)))
    assert result.metrics["dpo"]["peak_offset"] == 0
    assert result.metrics["dpo"]["tv_to_optimal"] == pytest.approx(0.044, abs=0.003)


def test_config_errors():
    with pytest.raises(ConfigError, match="one entry per type"):
        ProximityConfig(shifts=(0, 1), rates=(0.1,), scales=(1.0, 1.0))
    with pytest.raises(ConfigError, match="unknown method"):
        ExperimentConfig(methods=("ppo",))
    unequal = ProximityEnv(ProximityConfig(type_probs=(0.2, 0.3, 0.5)))
    with pytest.raises(ConfigError, match="equally represented"):
        fit_methods(unequal, ExperimentConfig(methods=("agreement",), num_full=1000))


def test_simulate_cli(tmp_path, capsys):
    config = {"environment": {"num_states": 40},
              "experiment": {"num_pairs": 100_000, "num_paired": 100_000, "num_full": 100_000,
                             "methods": ["dpo", "agreement"]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    assert main(["simulate", "--config", str(tmp_path / "c.yaml"), "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"dpo", "agreement", "reference", "timings_s"}
    assert (out / "policies.png").stat().st_size > 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1
    assert f"TV to π* {metrics['dpo']['tv_to_optimal']:.4f}" in page
    assert f"Spearman vs NBC {metrics['agreement']['spearman_nbc']:.3f}" in page
    assert yaml.safe_load((out / "config.yaml").read_text())["experiment"]["num_pairs"] == 100_000
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"experiment": {"nmu_pairs": 3}}))
    assert main(["simulate", "--config", str(tmp_path / "bad.yaml"), "--output-dir",
                 str(out)]) == 2
    assert "nmu_pairs" in capsys.readouterr().err


def test_latent_class_joint_model_recovers_variance_from_independent_pairs():
    """§5.3 with two *different* items per annotator: fit J by maximum likelihood, read Var."""
    from pluralign.reward.joint_likelihood import joint_preference_loss, pair_variance

    env = small_env()
    paired = env.sample_paired(60_000, np.random.default_rng(4))
    gen = torch.Generator().manual_seed(0)
    rewards = (0.5 * torch.randn(2, 2, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    logits = torch.zeros(2, dtype=torch.float64, requires_grad=True)

    def margins(part):
        x, c, r = (torch.as_tensor(getattr(part, f)) for f in ("state", "chosen", "rejected"))
        return (rewards[:, x, c] - rewards[:, x, r]).T

    opt = torch.optim.LBFGS([rewards, logits], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = joint_preference_loss(margins(paired.first), margins(paired.second), logits).mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        grid = rewards[:, :, :, None] - rewards[:, :, None, :]
        estimate = pair_variance(grid.movedim(0, -1), logits).numpy()
    exact = env.preference_variance(*np.indices((2, 3, 3)))
    np.testing.assert_allclose(estimate, exact, atol=0.02)
