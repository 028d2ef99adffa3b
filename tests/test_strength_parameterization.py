"""Strength-distribution coordinates (issue 12, defect 7): same family, different raw parameters."""

import math

import pytest
import torch
from scipy import stats

from pluralign.errors import ConfigError
from pluralign.strength import PARAMETERIZATIONS, Gamma, LogNormal, build_strength

MARGINS = torch.linspace(-5.0, 5.0, 11, dtype=torch.float64)


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_every_parameterization_starts_from_the_requested_distribution(parameterization):
    g = Gamma(3.0, 4.0, parameterization=parameterization)
    ref = stats.gamma(3.0, scale=0.25)
    assert float(g.mean().detach()) == pytest.approx(ref.mean(), rel=1e-12)
    assert float(g.variance().detach()) == pytest.approx(ref.var(), rel=1e-12)
    ln = LogNormal(-1.0, 0.8, parameterization=parameterization)
    ref = stats.lognorm(0.8, scale=math.exp(-1.0))
    assert float(ln.mean().detach()) == pytest.approx(ref.mean(), rel=1e-12)
    assert float(ln.variance().detach()) == pytest.approx(ref.var(), rel=1e-12)
    assert ln.params() == pytest.approx({"mu": -1.0, "sigma": 0.8}, rel=1e-12)
    for dist, default in ((g, Gamma(3.0, 4.0)), (ln, LogNormal(-1.0, 0.8))):
        torch.testing.assert_close(dist.log_expected_sigmoid(MARGINS),
                                   default.log_expected_sigmoid(MARGINS), rtol=1e-12, atol=0)


def test_mean_cv2_coordinates_are_log_mean_and_log_cv2():
    g = Gamma(2.0, 16.7, parameterization="mean_cv2")
    names = dict(g.named_parameters())
    assert set(names) == {"log_mean", "log_cv2"}
    assert float(names["log_mean"]) == pytest.approx(math.log(2.0 / 16.7))
    assert float(names["log_cv2"]) == pytest.approx(math.log(0.5))
    ln = LogNormal(-2.3, 0.6, parameterization="mean_cv2")
    assert float(ln.log_cv2) == pytest.approx(math.log(math.expm1(0.36)))


@pytest.mark.parametrize("parameterization", ["log", "mean_cv2"])
def test_gradients_reach_the_new_coordinates(parameterization):
    for dist in (Gamma(parameterization=parameterization),
                 LogNormal(parameterization=parameterization)):
        dist.log_expected_sigmoid(MARGINS).sum().backward()
        grads = [p.grad for p in dist.parameters()]
        assert len(grads) == 2 and all(g is not None and torch.isfinite(g) for g in grads)


def test_build_strength_passes_the_parameterization_and_rejects_unknown_ones():
    assert build_strength("gamma", parameterization="log").parameterization == "log"
    with pytest.raises(ConfigError, match="parameterization"):
        Gamma(parameterization="sqrt")
    with pytest.raises(ConfigError, match="parameterization"):
        LogNormal(parameterization="logit")


# ------------------------------------------------------------ as a training setting (issue 12)
def _recipe(*overrides):
    from pathlib import Path

    from pluralign.config import build_config
    from pluralign.training.recipe import TrainRecipe

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    return build_config(TrainRecipe, tiny, ["training.report_to=none", "training.use_cpu=true",
                                            *overrides])


@pytest.mark.parametrize("family", ["gamma", "lognormal"])
def test_training_setting_reaches_the_strength_distribution(family):
    recipe = _recipe(f"training.strength={family}", "training.strength_parameterization=mean_cv2")
    strength = recipe.training.build_objective().strength
    assert isinstance(strength, Gamma if family == "gamma" else LogNormal)
    assert strength.parameterization == "mean_cv2"
    assert {n for n, _ in strength.named_parameters()} == {"log_mean", "log_cv2"}
    default = _recipe(f"training.strength={family}").training.build_objective().strength
    assert default.parameterization == "softplus"  # the paper's coordinates stay the default


def test_training_setting_is_checked_and_only_for_distributions_that_read_it():
    from pluralign.errors import ConfigError as Error

    with pytest.raises(Error, match="strength_parameterization='sqrt' is unknown"):
        _recipe("training.strength_parameterization=sqrt")
    with pytest.raises(Error, match="strength_parameterization"):
        _recipe("training.strength=point", "training.strength_parameterization=log")


def test_mean_cv2_checkpoints_save_and_resume(tmp_path):
    """The saved strength tensors are log_mean/log_cv2 (not raw_shape/raw_rate); resuming from a
    checkpoint restores them and finishes where the uninterrupted run did."""
    from safetensors.torch import load_file

    from pluralign.data import make_population
    from pluralign.training import (
        PreferenceConfig,
        PreferenceTrainer,
        build_tokenizer,
        tiny_gpt_neox,
    )

    data = make_population(n_annotators=8, pairs_per_annotator=4, n_prompts=8,
                           text_style="compact").dataset
    tokenizer = build_tokenizer([t for c in ("prompt", "chosen", "rejected") for t in data[c]],
                                300)

    def trainer() -> PreferenceTrainer:
        args = PreferenceConfig(
            output_dir=str(tmp_path / "run"), objective="mixdpo", strength="gamma",
            strength_parameterization="mean_cv2", strength_learning_rate=5e-2,
            learning_rate=1e-3, optim="adamw_torch", per_device_train_batch_size=8, max_steps=4,
            save_steps=2, logging_steps=1, seed=0, use_cpu=True, report_to="none",
            disable_tqdm=True, max_length=48, max_prompt_length=24)
        model = tiny_gpt_neox(len(tokenizer), seed=0, hidden_size=32, intermediate_size=64)
        return PreferenceTrainer(model, args=args, train_dataset=data, processing_class=tokenizer)

    full = trainer()
    full.train()
    saved = load_file(str(tmp_path / "run" / "checkpoint-2" / "strength.safetensors"))
    assert {k.rsplit(".", 1)[-1] for k in saved} == {"log_mean", "log_cv2"}
    start = Gamma(parameterization="mean_cv2")
    assert float(saved[next(k for k in saved if k.endswith("log_cv2"))]) != pytest.approx(
        float(start.log_cv2))  # it trained
    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    for (name, a), (_, b) in zip(full.objective.named_parameters(),
                                 resumed.objective.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9, msg=name)
