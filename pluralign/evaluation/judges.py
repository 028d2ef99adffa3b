"""Pluggable pairwise judges for win rates ([MixDPO, §4.4; Tab. 1]).

A judge answers "which response to this prompt is better?" with a preference ``o ∈ [0, 1]`` for
response A over response B (1 = A, 0 = B, ½ = tie; soft judges return a probability). Any object
with ``name`` and ``compare(prompt, response_a, response_b) -> float`` is a :class:`Judge`; an
optional ``compare_batch(prompts, responses_a, responses_b) -> sequence of float`` is used when
present. :func:`judge_pairs` runs a judge over many prompts and never lets one bad item stop the
evaluation: an exception or an invalid answer marks that item failed (listed with its error), and
the statistics use the other items.

Provided judges:

* :class:`RewardModelJudge` — any scorer with ``score(prompts, responses)`` (e.g. the reward
  layer's Bradley–Terry head on MiniLM) or :class:`SequenceClassifierScorer` for a local
  sequence-classification checkpoint; A wins when its reward is higher (or ``σ(r_A − r_B)`` soft).
* :class:`HTTPJudge` — an OpenAI-compatible chat-completions endpoint. Off unless constructed
  explicitly; the API key is read from an environment variable at call time and never stored,
  logged or written to configs or reports, and never sent to another origin (a cross-origin
  redirect is refused).
"""

from __future__ import annotations

import json
import math
import os
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from pluralign.evaluation.errors import EvaluationError

#: Error messages stored per failed item are cut to this many characters.
MAX_ERROR_CHARS = 300


@runtime_checkable
class Judge(Protocol):
    """A pairwise judge: preference for ``response_a`` over ``response_b`` in [0, 1]."""

    name: str

    def compare(self, prompt: str, response_a: str, response_b: str) -> float: ...


@dataclass
class Judgments:
    """Outcome per item (NaN where the judge failed) and the failed items with their errors."""

    judge: str
    outcomes: np.ndarray
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of items with a valid judgement."""
        return np.isfinite(self.outcomes)


def _validate(value: Any) -> float:
    out = float(value)
    if not math.isfinite(out) or not 0.0 <= out <= 1.0:
        raise EvaluationError(f"judge returned {value!r}; a preference must be a number in [0, 1]")
    return out


def _failure(index: int, prompt: str, exc: BaseException) -> dict[str, Any]:
    return {"index": index, "prompt": prompt[:80],
            "error": f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]}


def judge_pairs(judge: Judge, prompts: Sequence[str], responses_a: Sequence[str],
                responses_b: Sequence[str], *, batch_size: int = 16,
                progress: bool = True) -> Judgments:
    """Judge every (prompt, A, B) triple; failures are recorded per item, never raised.

    A failing batch call (``compare_batch``) falls back to per-item calls for that batch, so only
    the items that fail on their own are marked failed.
    """
    n = len(prompts)
    if not (len(responses_a) == len(responses_b) == n):
        raise EvaluationError(f"judge_pairs: {n} prompts but {len(responses_a)} / "
                              f"{len(responses_b)} responses")
    outcomes = np.full(n, np.nan)
    failed: list[dict[str, Any]] = []
    batched = callable(getattr(judge, "compare_batch", None))
    step = batch_size if batched else 1
    for start in tqdm(range(0, n, step), desc=f"Judging ({judge.name})", disable=not progress):
        idx = range(start, min(start + step, n))
        if batched:
            try:
                values = list(judge.compare_batch([prompts[i] for i in idx],  # type: ignore[attr-defined]
                                                  [responses_a[i] for i in idx],
                                                  [responses_b[i] for i in idx]))
                if len(values) != len(idx):
                    raise EvaluationError(f"compare_batch returned {len(values)} values for "
                                          f"{len(idx)} items")
                outcomes[list(idx)] = [_validate(v) for v in values]
                continue
            except Exception:  # noqa: BLE001 - retried item by item below
                pass
        for i in idx:
            try:
                outcomes[i] = _validate(judge.compare(prompts[i], responses_a[i], responses_b[i]))
            except Exception as exc:  # noqa: BLE001 - one bad item must not stop the evaluation
                failed.append(_failure(i, prompts[i], exc))
    return Judgments(judge=judge.name, outcomes=outcomes, failed=failed)


class RewardModelJudge:
    """Judge by a reward model: ``o = 1[r_A > r_B]`` (½ on ties), or ``σ(r_A − r_B)`` if ``soft``.

    ``scorer`` is any object with ``score(prompts, responses) -> array of rewards``.
    """

    def __init__(self, scorer: Any, name: str = "reward-model", soft: bool = False) -> None:
        if not callable(getattr(scorer, "score", None)):
            raise EvaluationError("RewardModelJudge needs a scorer with score(prompts, responses)")
        self.scorer, self.name, self.soft = scorer, name, soft

    def compare_batch(self, prompts: Sequence[str], responses_a: Sequence[str],
                      responses_b: Sequence[str]) -> list[float]:
        ra = np.asarray(self.scorer.score(list(prompts), list(responses_a)), dtype=float).ravel()
        rb = np.asarray(self.scorer.score(list(prompts), list(responses_b)), dtype=float).ravel()
        diff = ra - rb
        if self.soft:
            return (1 / (1 + np.exp(-diff))).tolist()
        return np.where(diff > 0, 1.0, np.where(diff < 0, 0.0, 0.5)).tolist()

    def compare(self, prompt: str, response_a: str, response_b: str) -> float:
        return self.compare_batch([prompt], [response_a], [response_b])[0]


class SequenceClassifierScorer:
    """Rewards from a local ``AutoModelForSequenceClassification`` checkpoint (no download).

    The reward of (prompt, response) is the single logit (``num_labels == 1``), or the last
    minus the first logit for two-label classifiers ("good" − "bad"). Prompt and response are
    encoded as a text pair, truncated to ``max_length`` tokens.
    """

    def __init__(self, path: str | os.PathLike[str], device: str = "cpu",
                 max_length: int = 512, batch_size: int = 16) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not Path(path).is_dir():
            raise EvaluationError(f"reward model path {str(path)!r} is not a local folder")
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(path), local_files_only=True, use_safetensors=True).to(device).eval()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device, self.max_length, self.batch_size = device, max_length, batch_size

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for s in range(0, len(prompts), self.batch_size):
            enc = self.tokenizer(list(prompts[s:s + self.batch_size]),
                                 list(responses[s:s + self.batch_size]), truncation=True,
                                 max_length=self.max_length, padding=True, return_tensors="pt")
            with torch.inference_mode():
                logits = self.model(**enc.to(self.device)).logits.float()
            out.append((logits[:, 0] if logits.shape[-1] == 1
                        else logits[:, -1] - logits[:, 0]).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


_HTTP_PROMPT = (
    "You compare two responses to the same user prompt. Answer with exactly one letter: "
    "'A' if Response A is better, 'B' if Response B is better.\n\n"
    "Prompt:\n{prompt}\n\nResponse A:\n{a}\n\nResponse B:\n{b}\n\nBetter response (A or B):"
)


def redact_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``, for config files and messages
    (a password in the judge URL never reaches disk)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, the default port filled in (RFC 6454 origin)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only within the request's origin.

    urllib copies every header, ``Authorization`` included, onto the redirected request, so a
    redirect to another origin would hand the API key to that server; it is refused instead.
    """

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        if _origin(newurl) != _origin(req.full_url):
            raise EvaluationError(
                f"HTTPJudge: {req.full_url} answered {code} with a redirect to another origin "
                f"({newurl}); refused so the API key is not sent there. Point the judge URL at "
                "the final endpoint")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SameOriginRedirects)


class HTTPJudge:
    """An OpenAI-compatible ``/chat/completions`` judge (e.g. AlpacaEval-style GPT-4 judging).

    Args:
        base_url: e.g. ``"https://api.openai.com/v1"`` or a local vLLM server.
        model: the judge model name.
        api_key_env: name of the environment variable holding the key (read at call time; the
            key itself is never stored on this object).
        timeout: seconds per request.
        swap: judge odd-numbered calls with A and B swapped, to cancel position bias.
    """

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 60.0, swap: bool = True) -> None:
        self.base_url, self.model, self.api_key_env = base_url.rstrip("/"), model, api_key_env
        self.timeout, self.swap, self._calls = timeout, swap, 0
        self.name = f"http:{model}"

    def __repr__(self) -> str:
        return f"HTTPJudge(base_url={redact_userinfo(self.base_url)!r}, model={self.model!r}, " \
               f"api_key_env={self.api_key_env!r})"

    def _ask(self, prompt: str, a: str, b: str) -> str:
        key = os.environ.get(self.api_key_env)
        if not key:
            raise EvaluationError(f"HTTPJudge: environment variable {self.api_key_env} is not set")
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 1,
                           "messages": [{"role": "user",
                                         "content": _HTTP_PROMPT.format(prompt=prompt, a=a, b=b)}]})
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=body.encode("utf-8"), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        with _OPENER.open(request, timeout=self.timeout) as response:
            reply = json.loads(response.read().decode("utf-8"))
        return str(reply["choices"][0]["message"]["content"]).strip().upper()[:1]

    def compare(self, prompt: str, response_a: str, response_b: str) -> float:
        swapped = self.swap and self._calls % 2 == 1
        self._calls += 1
        first, second = (response_b, response_a) if swapped else (response_a, response_b)
        letter = self._ask(prompt, first, second)
        if letter not in ("A", "B"):
            raise EvaluationError(f"HTTPJudge: reply {letter!r} is neither 'A' nor 'B'")
        a_wins = (letter == "A") != swapped
        return 1.0 if a_wins else 0.0
