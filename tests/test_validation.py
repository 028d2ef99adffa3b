"""Numeric config validation (issue 15 #8, #10): bad numbers fail where the config is built."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pluralign.errors import ConfigError
from pluralign.reward import BradleyTerryConfig, PALConfig, PALRewardModel
from pluralign.reward.base import CheckpointError
from pluralign.training import SFTConfig
from pluralign.training.models import build_tokenizer, tiny_gpt_neox, tiny_model_overrides
from pluralign.validation import check_number

values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5),
                   st.booleans(), st.text(max_size=3), st.none())


@given(values)
def test_check_number_accepts_exactly_finite_positive_numbers(value):
    """Reference predicate written out independently of check_number."""
    valid = (type(value) in (int, float) and math.isfinite(value) and value > 0)
    if valid:
        assert check_number(value, "f", minimum=0, exclusive_minimum=True) == value
    else:
        with pytest.raises(ConfigError, match=r"^f=.* is invalid; use a finite number > 0$"):
            check_number(value, "f", minimum=0, exclusive_minimum=True)


@pytest.mark.parametrize(("field", "value"), [
    ("lr_users", -0.1), ("lr_projector", float("nan")), ("lr_prototypes", float("inf")),
    ("adapt_lr", 0.0), ("weight_decay", -1.0), ("user_init_std", float("nan")),
    ("validation_fraction", 1.0), ("lr_users", "abc"), ("epochs", 2.5), ("batch_size", True),
])
def test_pal_config_rejects_bad_numbers(field, value):
    """Before: lr_users=-0.1 trained to accuracy 0.3 and lr_projector=nan wrote a NaN model."""
    with pytest.raises(ConfigError, match=f"PALConfig.{field}="):
        PALConfig(**{field: value})


@pytest.mark.parametrize(("field", "value"), [("lr", float("nan")), ("lr", float("inf")),
                                              ("weight_decay", float("nan"))])
def test_bradley_terry_config_rejects_nan_and_inf(field, value):
    with pytest.raises(ConfigError, match=f"BradleyTerryConfig.{field}="):
        BradleyTerryConfig(**{field: value})


def test_a_nan_model_is_never_written(tmp_path):
    """Before: save_pretrained wrote model.safetensors full of NaN, then failed on config.json."""
    model = PALRewardModel(4, PALConfig(show_progress=False))
    with torch.no_grad():
        model.log_scale.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="non-finite.*log_scale"):
        model.save_pretrained(tmp_path / "pal")
    assert not (tmp_path / "pal").exists() or list((tmp_path / "pal").iterdir()) == []


@pytest.mark.parametrize(("value", "message"), [
    (-5, r"tokenizer vocab_size=-5 is invalid; use an integer >= 257"),
    (100, r"vocab_size=100 is invalid"), ("512", r"vocab_size='512' is invalid"),
])
def test_build_tokenizer_rejects_a_bad_vocab_size(value, message):
    """Issue 15 #10: tokenizer_vocab_size: -5 was silently raised to 257."""
    with pytest.raises(ConfigError, match=message):
        build_tokenizer(["some text"], vocab_size=value)


@pytest.mark.parametrize(("model_config", "message"), [
    ("big", r"model_config must be a mapping of GPTNeoXConfig fields .* got str 'big'"),
    ({"hiden_size": 64}, r"model_config: unknown key\(s\) \['hiden_size'\]; valid keys: .*"
                         r"hidden_size"),
    ({"hidden_dropout": 0.1}, r"model_config: 'hidden_dropout' is fixed by pluralign"),
    ({"hidden_size": -8}, r"model_config.hidden_size=-8 is invalid; use an integer >= 1"),
    ({"num_hidden_layers": 1.5}, r"model_config.num_hidden_layers=1.5 is invalid"),
    ({"hidden_size": 30, "num_attention_heads": 4},
     r"model_config: hidden_size=30 must be a multiple of num_attention_heads=4"),
])
def test_tiny_model_config_is_checked(model_config, message):
    """Issue 15 #9/#10: a string model_config raised a TypeError in the CLI; unknown keys were
    accepted by GPTNeoXConfig and ignored."""
    with pytest.raises(ConfigError, match=message):
        tiny_model_overrides(model_config)
    if isinstance(model_config, dict):
        with pytest.raises(ConfigError, match=message):
            tiny_gpt_neox(300, **model_config)


def test_tiny_model_overrides_accepts_architecture_fields():
    assert tiny_model_overrides(None) == {}
    assert tiny_model_overrides({"hidden_size": 32, "num_attention_heads": 2}) == {
        "hidden_size": 32, "num_attention_heads": 2}
    assert tiny_gpt_neox(300, hidden_size=32, num_attention_heads=2).config.hidden_size == 32


@pytest.mark.parametrize(("field", "value"), [
    ("learning_rate", math.inf), ("learning_rate", "abc"), ("learning_rate", -1e-5),
    ("max_length", "long"), ("max_prompt_length", 1.5),
])
def test_sft_config_rejects_bad_numbers(tmp_path, field, value):
    """Issue 15 #10: learning_rate=inf passed and failed mid-training; 'abc' gave "'<' not
    supported between instances of 'str' and 'int'"."""
    with pytest.raises(ConfigError, match=f"SFTConfig.{field}="):
        SFTConfig(output_dir=str(tmp_path), **{field: value})


@pytest.mark.parametrize(("field", "value"), [
    ("per_device_train_batch_size", 0), ("per_device_train_batch_size", -4),
    ("per_device_eval_batch_size", 0), ("gradient_accumulation_steps", 0),
    ("num_train_epochs", math.nan),
])
def test_sft_config_rejects_empty_batches(tmp_path, field, value):
    """Issue 15 #9: batch size 0 or negative raised a traceback from the data loader."""
    with pytest.raises(ConfigError, match=f"SFTConfig.{field}={value!r} is invalid"):
        SFTConfig(output_dir=str(tmp_path), **{field: value})
