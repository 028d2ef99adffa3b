"""Models and tokenizers that need no download: a tiny GPT-NeoX (Pythia architecture) built from a
config, a byte-level BPE tokenizer trained on the dataset's own text, and loading of local Hugging
Face folders or registered model names (:mod:`pluralign.training.registry`).

Every entry point is deterministic given its seed, so tests and CPU demos reproduce exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from pluralign.errors import ConfigError
from pluralign.training.registry import resolve_model

EOS_TOKEN = "<|endoftext|>"

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


def tiny_gpt_neox(vocab_size: int, seed: int = 0, **overrides: int | float) -> GPTNeoXForCausalLM:
    """Build a randomly initialised GPT-NeoX causal LM (the Pythia architecture) from a config.

    ``overrides`` are ``GPTNeoXConfig`` fields (``hidden_size``, ``num_hidden_layers``, ...);
    defaults are :data:`TINY_DEFAULTS`. The weights depend only on ``seed``. Dropout is off (as in
    Pythia), so two forward passes over the same batch agree exactly.
    """
    if vocab_size < 2:
        raise ConfigError(f"tiny_gpt_neox: vocab_size must be >= 2, got {vocab_size}")
    kwargs = {**TINY_DEFAULTS, **overrides}
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
    ``vocab_size`` entries); without, the tokenizer is pure byte-level (257 entries). Any UTF-8
    text round-trips.
    ``chat_template`` installs :data:`SIMPLE_CHAT_TEMPLATE` so chat-message data can be tokenised.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, 257) if texts is not None else 257,
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


def load_tokenizer(name_or_path: str | Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder or a registered name (see
    :mod:`pluralign.training.registry`; never the network); sets ``pad_token = eos_token`` if
    unset."""
    folder = resolve_model(name_or_path)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(
    name_or_path: str | Path, dtype: str | torch.dtype = "float32"
) -> PreTrainedModel:
    """Load a causal LM (safetensors weights, no download) in ``dtype`` from a local folder or a
    registered name (see :mod:`pluralign.training.registry`)."""
    folder = resolve_model(name_or_path)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch_dtype, local_files_only=True, use_safetensors=True
    )
