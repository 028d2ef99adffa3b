"""Policy training: sequence log-probs, PreferenceTrainer (DPO/MixDPO on transformers.Trainer), SFT,
and a tiny GPT-NeoX + tokenizer factory that needs no download."""

from pluralign.training.config import PreferenceConfig
from pluralign.training.loading import load_causal_lm, load_tokenizer
from pluralign.training.logps import sequence_logps
from pluralign.training.models import build_tokenizer, tiny_gpt_neox
from pluralign.training.sft import SFTConfig, run_sft
from pluralign.training.tokenization import PreferenceCollator, tokenize_pair
from pluralign.training.trainer import PreferenceTrainer

__all__ = [
    "PreferenceCollator",
    "PreferenceConfig",
    "PreferenceTrainer",
    "SFTConfig",
    "build_tokenizer",
    "load_causal_lm",
    "load_tokenizer",
    "run_sft",
    "sequence_logps",
    "tiny_gpt_neox",
    "tokenize_pair",
]
