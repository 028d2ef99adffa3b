"""The loop the experiments share (pluralign.training.methods): each method's arguments are the
training section, then the method's own fields, then the run's; SFT once; LoRA or full copies."""

import pytest
import torch

from pluralign.config import build_config, changed_fields, config_from_dict, config_values
from pluralign.data.synthetic import PopulationConfig, make_population
from pluralign.errors import ConfigError
from pluralign.training import PreferenceConfig, SFTConfig, build_tokenizer, tiny_gpt_neox
from pluralign.training.methods import MethodsConfig, train_methods
from pluralign.training.recipe import ModelConfig


def test_method_arguments_layer_training_then_method_then_run(tmp_path):
    cfg = MethodsConfig(
        seed=7, progress=False,
        training=PreferenceConfig(learning_rate=3e-4, strength_learning_rate=0.3, max_length=48,
                                  max_prompt_length=32, save_strategy="steps"),
        methods={"DPO": {"objective": "dpo", "beta": 0.2},
                 "Mix": {"objective": "mixdpo", "strength": "gamma", "learning_rate": 1e-3}})
    dpo, mix = cfg.method_args("DPO", tmp_path / "a"), cfg.method_args("Mix", tmp_path / "b")
    assert (dpo.objective, dpo.beta, dpo.learning_rate) == ("dpo", 0.2, 3e-4)
    assert (mix.objective, mix.strength, mix.learning_rate) == ("mixdpo", "gamma", 1e-3)
    assert dpo.strength_learning_rate == mix.strength_learning_rate == 0.3
    for args, folder in ((dpo, "a"), (mix, "b")):
        assert args.output_dir == str(tmp_path / folder) and args.seed == 7
        assert args.save_strategy == "no" and args.disable_tqdm  # runs keep no checkpoints
        assert (args.max_length, args.max_prompt_length) == (48, 32)
    sft = cfg.sft_args(tmp_path / "sft")
    assert isinstance(sft, SFTConfig) and sft.seed == 7 and sft.output_dir == str(tmp_path / "sft")


def test_changed_fields_are_what_was_set_and_rebuild_the_section():
    args = PreferenceConfig(learning_rate=3e-4, use_cpu=True, objective="mixdpo",
                            strength="gamma", save_strategy="no")
    changed = changed_fields(args)
    # use_cpu implies dataloader_pin_memory=False: an implied field is not recorded
    assert changed == {"learning_rate": 3e-4, "use_cpu": True, "objective": "mixdpo",
                       "strength": "gamma", "save_strategy": "no"}
    assert PreferenceConfig(**changed) == args
    assert changed_fields(PreferenceConfig()) == {}


def test_a_dotted_override_keeps_the_rest_of_a_section_default():
    """An experiment's training section has its own defaults: overriding one field keeps them."""
    from pluralign.experiments.demo import DemoConfig

    cfg = build_config(DemoConfig, overrides=["training.num_train_epochs=3"])
    default = DemoConfig()
    assert cfg.training.num_train_epochs == 3
    assert changed_fields(cfg.training) == {**changed_fields(default.training),
                                            "num_train_epochs": 3}
    assert config_values(build_config(DemoConfig, overrides=["model.config.hidden_size=32"])
                         )["model"]["tokenizer_vocab_size"] == 400


@pytest.mark.parametrize(("values", "message"), [
    ({"methods": {}}, r"MethodsConfig.methods=\{\} is invalid"),
    ({"methods": {"DPO": "dpo"}}, r"MethodsConfig.methods=.* is invalid"),
    ({"methods": {"DPO": {"objective": "nope"}}}, r"methods.DPO: objective='nope' is unknown"),
    ({"methods": {"DPO": {"seed": 1}}}, r"methods.DPO: seed is set for every run"),
    ({"model": {"ref_model": "sft"}}, r"every method's reference is the SFT model"),
    ({"training": {"seed": 5}}, r"training.seed=5 differs from seed=0"),
    ({"seed": -1}, r"MethodsConfig.seed=-1 is invalid"),
])
def test_bad_methods_configs_are_refused_before_training(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(MethodsConfig, values)


def test_lora_methods_train_adapters_and_leave_the_reference_untouched(tmp_path):
    pop = make_population(PopulationConfig(n_annotators=4, pairs_per_annotator=4,
                                           text_style="compact", seed=1))
    tok = build_tokenizer(list(pop.dataset["prompt"]) + list(pop.dataset["chosen"]),
                          vocab_size=300)
    model = tiny_gpt_neox(len(tok), seed=1, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = MethodsConfig(
        sft=None, progress=False,
        model=ModelConfig(lora={"r": 4, "lora_alpha": 8, "target_modules": ["query_key_value"]}),
        training=PreferenceConfig(learning_rate=1e-2, max_steps=2, per_device_train_batch_size=8,
                                  max_length=48, max_prompt_length=32, use_cpu=True),
        methods={"MixDPO-Gamma": {"objective": "mixdpo", "strength": "gamma"}})
    [(method, policy, reference, trainer)] = list(
        train_methods(cfg, pop.dataset, tok, model, tmp_path))
    assert method == "MixDPO-Gamma" and reference is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    adapters = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    assert any(p.abs().sum() > 0 for n, p in adapters.items() if "lora_B" in n)  # trained
    assert trainer.args.output_dir == str(tmp_path / "MixDPO-Gamma")
