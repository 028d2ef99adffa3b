"""Summed completion log-probabilities of causal LMs, computed only where they are needed.

``sequence_logps`` returns, for each row ``i`` of a right-padded batch,

    log π(y_i | x_i) = Σ_t  m_{i,t} · log softmax(z_{i,t-1})[y_{i,t}]

where ``m`` is the completion mask (1 on completion tokens) and ``z_{i,t-1}`` the logits at the
position that predicts token ``t`` (DPO, Rafailov et al. 2023, eq. 7; MixDPO paper §3.1 uses the
same r_θ).

Two equivalent paths:

* **completion-only head** (plain model or peft model, the common single-process and reference
  case): the transformer backbone runs once, the LM head is applied only to the hidden states of
  positions that predict a completion token, and ``cross_entropy`` (a fused logsumexp-gather) gives
  the token log-probs, so the ``[rows, length, vocab]`` logits and their log-softmax copy are never
  materialised. Large ``tokens × vocab`` products are processed in chunks under activation
  checkpointing.
* **generic** (a model wrapped by DDP/FSDP/DeepSpeed, whose forward must go through the wrapper):
  the model's own forward with ``logits_to_keep`` set to the completion region.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

#: Above this many logits (tokens × vocab) the completion-only head works in checkpointed chunks.
CHUNK_ELEMENTS = 1 << 25


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Half-precision logits in float32; float32/float64 logits as they are."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _token_logps(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(head(hidden))[targets] in at least float32, via the fused cross-entropy
    kernel."""
    return -F.cross_entropy(_upcast(head(hidden)), targets, reduction="none")


def _split_lm(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(backbone, lm_head) when calling them separately is equivalent to the model's forward, else
    None."""
    if hasattr(
        model, "get_base_model"
    ):  # peft: LoRA layers are injected in place in the base model
        peft_config = getattr(model, "active_peft_config", None)
        if peft_config is None or getattr(peft_config, "is_prompt_learning", False):
            return None
        model = model.get_base_model()
    config = getattr(model, "config", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if config is None or get_head is None or not hasattr(model, "base_model"):
        return None
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(
        getattr(text_config, name, None) not in (None, 1.0)
        for name in (
            "final_logit_softcapping",
            "logit_scale",
            "logits_scaling",
            "lm_head_multiplier",
        )
    ):
        return None
    head = get_head()
    backbone = model.base_model
    if head is None or backbone is model:
        return None
    return backbone, head


def _completion_head_logps(
    backbone: nn.Module,
    head: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False
    ).last_hidden_state
    predicts = completion_mask[:, 1:].bool()  # position t predicts token t+1
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    rows = rows[:, None].expand_as(predicts)[predicts]
    token_logps = head_token_logps(head, hidden[:, :-1][predicts], input_ids[:, 1:][predicts])
    out = torch.zeros(input_ids.shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return out.index_add(0, rows, token_logps)


def head_token_logps(head: nn.Module, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(head(states))[targets]`` (float32) for flat ``states [N, hidden]`` and
    ``targets [N]``; above :data:`CHUNK_ELEMENTS` logits, in checkpointed chunks."""
    vocab = head.weight.shape[0]
    chunk = max(CHUNK_ELEMENTS // vocab, 1)
    if states.shape[0] <= chunk:
        token_logps = _token_logps(head, states, targets)
    else:
        token_logps = torch.cat(
            [
                checkpoint(_token_logps, head, s, t, use_reentrant=False)
                if torch.is_grad_enabled()
                else _token_logps(head, s, t)
                for s, t in zip(states.split(chunk), targets.split(chunk), strict=True)
            ]
        )
    return token_logps


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    inner = model
    while isinstance(getattr(inner, "module", None), nn.Module):
        inner = inner.module
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _generic_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    length = input_ids.shape[1]
    has_completion = completion_mask.any(dim=0).nonzero()
    first = int(has_completion[0]) if len(has_completion) else length - 1
    first = max(first, 1)
    kwargs = {"use_cache": False}
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = length - first + 1
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
    logits = logits[:, -(length - first + 1) : -1]
    targets = input_ids[:, first:]
    token_logps = -F.cross_entropy(_upcast(logits).transpose(1, 2), targets, reduction="none")
    return (token_logps * completion_mask[:, first:]).sum(dim=1)


def sequence_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
    completion_head: bool = True,
) -> torch.Tensor:
    """Summed completion log-probs ``[rows]`` (float32; float64 for a float64 model) of a
    right-padded batch; see the module docstring.

    ``completion_mask[i, t] = 1`` marks token ``t`` of row ``i`` as a completion token (position 0
    is never a completion token: it has no context). Rows with no completion token get 0.
    ``completion_head=False`` forces the generic path (used so that a reference model is scored
    exactly like a wrapped policy, making the margin exactly 0 when both have the same weights).
    """
    split = _split_lm(model) if completion_head else None
    if split is not None:
        return _completion_head_logps(*split, input_ids, attention_mask, completion_mask)
    return _generic_logps(model, input_ids, attention_mask, completion_mask)


def supports_completion_head(model: nn.Module) -> bool:
    """Whether :func:`sequence_logps` can use the completion-only head on ``model``."""
    return _split_lm(model) is not None
