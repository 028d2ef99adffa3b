"""Loading a causal LM or its tokenizer from a local folder or a registered model name.

Names resolve through :mod:`pluralign.training.registry` (built once into a local cache); nothing
here touches the network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from pluralign.training.registry import resolve_model


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
