"""Models and tokenizers that need no download: a tiny GPT-NeoX (Pythia architecture) built from a
config and a byte-level BPE tokenizer trained on the dataset's own text. Loading local Hugging Face
folders or registered model names is :mod:`pluralign.training.loading`.

Every entry point is deterministic given its seed, so tests and CPU demos reproduce exactly.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

from pluralign.errors import ConfigError
from pluralign.validation import COUNT, check_number

EOS_TOKEN = "<|endoftext|>"
#: The 256 byte tokens plus ``<|endoftext|>``: the smallest vocabulary :func:`build_tokenizer` has.
BYTE_VOCAB = 257

#: A minimal chat template for tokenizers built here, so chat data can be trained on a tiny model.
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

#: Pythia-like sizes for a CPU-trainable policy (about 0.2M parameters without the embeddings).
TINY_DEFAULTS = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "max_position_embeddings": 256,
}


#: GPTNeoXConfig fields :func:`tiny_gpt_neox` sets itself (token ids, no dropout, untied head).
_FIXED_FIELDS = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "hidden_dropout",
                 "attention_dropout", "tie_word_embeddings")
#: Overrides that are sizes: integers >= 1.
_SIZE_FIELDS = tuple(TINY_DEFAULTS)


def _config_fields() -> list[str]:
    names = inspect.signature(GPTNeoXConfig.__init__).parameters
    return sorted(n for n in names if n not in ("self", "kwargs", "transformers_version"))


def tiny_model_overrides(model_config: object, where: str = "model_config") -> dict[str, Any]:
    """Check a recipe's ``model_config`` (GPTNeoXConfig overrides for ``model: tiny``).

    ``None`` is ``{}``; anything but a mapping, an unknown or pluralign-fixed key, a size that is
    not an integer >= 1, or a ``hidden_size`` that ``num_attention_heads`` does not divide raises
    :class:`ConfigError` naming the key (GPTNeoXConfig itself keeps unknown keys silently).
    """
    if model_config is None:
        return {}
    if not isinstance(model_config, Mapping):
        raise ConfigError(
            f"{where} must be a mapping of GPTNeoXConfig fields (e.g. {{hidden_size: 64, "
            f"num_hidden_layers: 2}}), got {type(model_config).__name__} {model_config!r}")
    valid = [n for n in _config_fields() if n not in _FIXED_FIELDS]
    for key in model_config:
        if key in _FIXED_FIELDS:
            raise ConfigError(f"{where}: {key!r} is fixed by pluralign for tiny models; "
                              "remove it")
    unknown = sorted(str(k) for k in model_config if k not in valid)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")
    out = dict(model_config)
    for key in _SIZE_FIELDS:
        if key in out:
            out[key] = check_number(out[key], f"{where}.{key}", **COUNT)
    sizes = {**TINY_DEFAULTS, **out}
    if sizes["hidden_size"] % sizes["num_attention_heads"]:
        raise ConfigError(
            f"{where}: hidden_size={sizes['hidden_size']} must be a multiple of "
            f"num_attention_heads={sizes['num_attention_heads']}")
    return out


def tiny_gpt_neox(vocab_size: int, seed: int = 0, **overrides: int | float) -> GPTNeoXForCausalLM:
    """Build a randomly initialised GPT-NeoX causal LM (the Pythia architecture) from a config.

    ``overrides`` are ``GPTNeoXConfig`` fields (``hidden_size``, ``num_hidden_layers``, ...);
    defaults are :data:`TINY_DEFAULTS`. The weights depend only on ``seed``. Dropout is off (as in
    Pythia), so two forward passes over the same batch agree exactly.
    """
    check_number(vocab_size, "tiny_gpt_neox: vocab_size", minimum=2, integer=True)
    kwargs = {**TINY_DEFAULTS, **tiny_model_overrides(overrides)}
    config = GPTNeoXConfig(
        vocab_size=vocab_size,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        **kwargs,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(config)
    return model.eval()


def build_tokenizer(
    texts: Iterable[str] | None = None, vocab_size: int = 512, chat_template: bool = True
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ``<|endoftext|>`` (id 0) as BOS, EOS and padding token.

    With ``texts`` the merges are learned from them (``tokenizers`` BPE trainer, up to
    ``vocab_size`` entries, an integer >= 257); without, the tokenizer is pure byte-level (257
    entries). Any UTF-8 text round-trips.
    ``chat_template`` installs :data:`SIMPLE_CHAT_TEMPLATE` so chat-message data can be tokenised.
    """
    check_number(vocab_size, "tokenizer vocab_size", minimum=BYTE_VOCAB, integer=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size if texts is not None else BYTE_VOCAB,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts) if texts is not None else [], trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )
    if chat_template:
        fast.chat_template = SIMPLE_CHAT_TEMPLATE
    return fast
