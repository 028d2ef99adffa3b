"""Packed preference batches: the prompt computed once per pair (``share_prompt``) and rows
without padding (``padding_free``), with sequence log-probs equal to the padded computation.

Layout. A *unit* is a prompt followed by one or two completions: ``prompt + chosen`` and
``prompt + rejected`` (two units per pair), or, with ``share_prompt``, ``prompt + chosen +
rejected`` (one unit per pair, the prompt's tokens run through the model once instead of twice).
Inside a unit the tokens carry a *segment* (0 prompt, 1 the first completion, 2 the second) and
position ids ``0 .. P−1`` on the prompt and ``P .. P+L−1`` on *each* completion, so the rejected
completion continues from the prompt's end as if the chosen one were not there. Units are laid
out in rows: one per row (right-padded to the longest unit), or, with ``padding_free``, several
per row (first-fit decreasing into rows as wide as the longest unit), so that padding is left only
at the end of a row.

Attention. A query token ``i`` sees a key token ``j`` of its row iff ``j ≤ i``, both are in the
same unit, and ``j`` is in the prompt or in ``i``'s own segment. Every token then sees exactly
the tokens, at exactly the positions, that it sees in its own right-padded row of
:class:`~pluralign.training.tokenization.PreferenceCollator` — so its hidden state, and every
log-prob, is the same function of the same inputs (equal up to floating-point summation order:
~1e-15 in float64, ~1e-6 in float32; tests/test_packing.py).

* Without ``share_prompt`` the rule is block-diagonal causal attention over units, which is
  ``transformers``' flattening convention (``DataCollatorWithFlattening``): position ids restart
  at 0 for every unit and no attention mask is passed. ``transformers`` ≥ 4.53 derives the
  block-diagonal mask from the position ids (``masking_utils.find_packed_sequence_indices``) for
  eager and SDPA attention as well as flash attention, so the same batch runs on CPU and GPU.
  Trailing row padding restarts at position 0 too and so forms its own, never-read block.
* With ``share_prompt`` the two completions of a unit must not see each other, which position
  ids cannot express: the batch carries an explicit ``[rows, 1, W, W]`` boolean mask, passed to
  the model as an additive float mask (eager and SDPA accept it; flash attention does not).

Scoring. A completion token at column ``c`` is predicted by the hidden state at column ``c − 1``,
or, for the first token of a completion, at the prompt's last column (none when the prompt is
empty: position 0 has no context, as in :func:`~pluralign.training.logps.sequence_logps`). The
batch lists these (row, source column, target id, sequence) quadruples once, at collation, so
the step does no index arithmetic and no host synchronisation; sequence ``i < B`` is pair
``i``'s chosen completion, ``B + i`` its rejected one (the order of ``sequence_logps``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pluralign.errors import ConfigError
from pluralign.training.logps import _split_lm, _upcast, head_token_logps, sequence_logps
from pluralign.training.tokenization import per_pair_columns

#: Keys of a packed batch that describe which tokens are scored (see the module docstring).
SCORE_KEYS = ("logp_rows", "logp_sources", "logp_targets", "logp_sequences")
#: At most this many row groups of different widths (one forward call each) per batch.
MAX_ROW_GROUPS = 3
#: An extra row group must save this fraction of the single group's tokens to be used.
ROW_GROUP_COST = 0.05


@dataclass(frozen=True)
class _Unit:
    """One unit's tokens: ``prompt`` then ``completions`` (each with its sequence index)."""

    prompt: Sequence[int]
    completions: tuple[tuple[int, Sequence[int]], ...]

    def __len__(self) -> int:
        return len(self.prompt) + sum(len(ids) for _, ids in self.completions)


def _units(examples: Sequence[Mapping[str, Any]], share_prompt: bool) -> list[_Unit]:
    b = len(examples)
    if share_prompt:
        return [
            _Unit(ex["prompt_ids"], ((i, ex["chosen_ids"]), (b + i, ex["rejected_ids"])))
            for i, ex in enumerate(examples)
        ]
    chosen = [_Unit(ex["prompt_ids"], ((i, ex["chosen_ids"]),)) for i, ex in enumerate(examples)]
    rejected = [
        _Unit(ex["prompt_ids"], ((b + i, ex["rejected_ids"]),)) for i, ex in enumerate(examples)
    ]
    return chosen + rejected


def _rows(lengths: Sequence[int], width: int, padding_free: bool) -> list[list[int]]:
    """Unit indices per row: one unit per row, or first-fit decreasing into rows of ``width``."""
    if not padding_free:
        return [[u] for u in range(len(lengths))]
    rows: list[list[int]] = []
    room: list[int] = []
    for u in sorted(range(len(lengths)), key=lambda k: (-lengths[k], k)):
        slot = next((r for r, free in enumerate(room) if free >= lengths[u]), None)
        if slot is None:
            rows.append([])
            room.append(width)
            slot = len(rows) - 1
        rows[slot].append(u)
        room[slot] -= lengths[u]
    return rows


def _row_groups(
    used: Sequence[int], pad_to_multiple_of: int | None
) -> list[tuple[int, int, int]]:
    """Split rows sorted by used width (longest first) into at most :data:`MAX_ROW_GROUPS`
    contiguous groups ``(first row, end row, width)``, each as wide as its widest row (rounded up
    to ``pad_to_multiple_of``), choosing the count that minimises the tokens fed plus
    :data:`ROW_GROUP_COST` of the single group's tokens per extra group (an extra forward call)."""

    def rounded(w: int) -> int:
        w = max(w, 1)
        return -(-w // pad_to_multiple_of) * pad_to_multiple_of if pad_to_multiple_of else w

    n = len(used)
    # best[g][j]: (tokens, cuts) of the first j rows in g groups
    best: list[list[tuple[int, tuple[int, ...]] | None]] = [[(0, ())] + [None] * n]
    for _ in range(MAX_ROW_GROUPS):
        prev, row = best[-1], [None] * (n + 1)
        for j in range(1, n + 1):
            options = [(prev[i][0] + (j - i) * rounded(used[i]), (*prev[i][1], i))
                       for i in range(j) if prev[i] is not None]
            row[j] = min(options) if options else None
        best.append(row)
    single = best[1][n][0]
    tokens, cuts = min(
        (best[g][n][0] + ROW_GROUP_COST * single * (g - 1), best[g][n][1])
        for g in range(1, MAX_ROW_GROUPS + 1) if best[g][n] is not None
    )
    ends = (*cuts[1:], n)
    return [(i, j, rounded(used[i])) for i, j in zip(cuts, ends, strict=True)]


def block_attention_mask(unit_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """``[rows, 1, W, W]`` boolean mask (True: may attend) of the module docstring's rule from
    per-token ``unit_ids`` and ``segment_ids`` (``[rows, W]``): causal, within a unit, and to the
    prompt (segment 0) or the query's own segment. Row padding (unit −1, segment 0) sees only
    earlier padding, so no row of the mask is empty."""
    width = unit_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=unit_ids.device).tril()
    same_unit = unit_ids[:, :, None] == unit_ids[:, None, :]
    seg_q, seg_k = segment_ids[:, :, None], segment_ids[:, None, :]
    return (causal & same_unit & ((seg_k == 0) | (seg_k == seg_q)))[:, None]


def pack_pairs(
    examples: Sequence[Mapping[str, Any]],
    pad_token_id: int,
    share_prompt: bool = True,
    padding_free: bool = True,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pack tokenised pairs (``prompt_ids``, ``chosen_ids``, ``rejected_ids``) into rows (see the
    module docstring).

    Returns ``input_ids`` and ``position_ids`` (``[rows, W]``), ``attention_mask``
    (``[rows, 1, W, W]`` bool, only with ``share_prompt``), the scored tokens as four flat long
    tensors :data:`SCORE_KEYS` (in row order) and ``sequence_lengths`` (``[2B]``: tokens scored
    per sequence). ``W`` is the longest unit, rounded up to ``pad_to_multiple_of``. Rows are
    sorted by the tokens they hold, longest first, and ``row_groups`` (a tuple of plain ints
    ``(first row, end row, width, scored tokens)``, so reading it needs no device sync) splits
    them into runs the model is called on separately, each cut to its own width: the columns
    cut off are padding, so the forward skips them (:func:`_row_groups`).
    """
    units = _units(examples, share_prompt)
    lengths = [len(u) for u in units]
    width = max(max(lengths), 1)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    layout = _rows(lengths, width, padding_free)
    used = [sum(lengths[u] for u in row) for row in layout]
    order = sorted(range(len(layout)), key=lambda r: -used[r])
    layout = [layout[r] for r in order]
    used = [used[r] for r in order]
    groups = _row_groups(used, pad_to_multiple_of)
    # One entry per piece (a unit's prompt or one completion), in row order: its row, first
    # column, first position id, unit, segment, sequence (−1: the prompt) and prompt-end column.
    meta: list[tuple[int, int, int, int, int, int, int]] = []
    sizes: list[int] = []
    token_ids: list[int] = []
    for r, row in enumerate(layout):
        col = 0
        for u in row:
            unit = units[u]
            p = len(unit.prompt)
            prompt_end = col + p - 1  # the prompt's last column (col − 1 when it is empty)
            pieces = [(0, -1, unit.prompt, 0)] + [
                (s + 1, sequence, ids, p) for s, (sequence, ids) in enumerate(unit.completions)
            ]
            for segment, sequence, ids, first_position in pieces:
                meta.append((r, col, first_position, u, segment, sequence, prompt_end))
                sizes.append(len(ids))
                token_ids += ids
                col += len(ids)
    shape = (len(layout), width)
    rows_of, first_col, first_pos, unit_of, seg_of, seq_of, end_of = (
        np.repeat(np.asarray(column, dtype=np.int64).reshape(-1), sizes)
        for column in zip(*meta, strict=True)
    )
    within = np.arange(len(token_ids)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    cols = first_col + within
    columns_of_row = np.arange(width)[None, :] - np.asarray(used, dtype=np.int64)[:, None]
    position_ids = np.where(columns_of_row >= 0, columns_of_row, 0)  # padding: its own block
    input_ids = np.full(shape, pad_token_id, dtype=np.int64)
    unit_ids = np.full(shape, -1, dtype=np.int64)
    segment_ids = np.zeros(shape, dtype=np.int64)
    targets = np.asarray(token_ids, dtype=np.int64)
    input_ids[rows_of, cols] = targets
    position_ids[rows_of, cols] = first_pos + within
    unit_ids[rows_of, cols] = unit_of
    segment_ids[rows_of, cols] = seg_of
    # A completion token is predicted by the column before it, its first token by the prompt's
    # last column; none for the first token after an empty prompt (position 0: no context).
    scored = (seg_of > 0) & ((within > 0) | (first_pos > 0))
    sources = np.where(within > 0, cols - 1, end_of)
    columns = torch.from_numpy(np.stack([rows_of, sources, targets, seq_of])[:, scored])
    input_ids, position_ids, unit_ids, segment_ids = (
        torch.from_numpy(a) for a in (input_ids, position_ids, unit_ids, segment_ids)
    )
    batch = {"input_ids": input_ids, "position_ids": position_ids}
    if share_prompt:
        batch["attention_mask"] = block_attention_mask(unit_ids, segment_ids)
    batch.update(zip(SCORE_KEYS, columns, strict=True))
    batch["sequence_lengths"] = torch.bincount(columns[3], minlength=2 * len(examples))
    scored_rows = torch.bincount(columns[0], minlength=len(layout)).tolist()
    batch["row_groups"] = tuple(
        (first, end, w, sum(scored_rows[first:end])) for first, end, w in groups
    )
    return batch


@dataclass
class PackedPreferenceCollator:
    """Collate tokenised pairs with :func:`pack_pairs`, plus every numeric per-pair column as a
    float ``[B]`` tensor (like :class:`~pluralign.training.tokenization.PreferenceCollator`)."""

    pad_token_id: int
    share_prompt: bool = True
    padding_free: bool = True
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = pack_pairs(
            examples,
            self.pad_token_id,
            self.share_prompt,
            self.padding_free,
            self.pad_to_multiple_of,
        )
        batch.update(per_pair_columns(examples))
        return batch


def _additive(mask: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A boolean attention mask as the additive float mask eager attention expects (0 where
    allowed, the dtype's lowest value elsewhere), in the model's parameter dtype."""
    dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    zeros = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return zeros.masked_fill_(~mask, torch.finfo(dtype).min)


def packed_sequence_logps(
    model: nn.Module, batch: Mapping[str, torch.Tensor], completion_head: bool = True
) -> torch.Tensor:
    """Summed completion log-probs ``[2B]`` (float32; float64 for a float64 model) of a batch
    from :func:`pack_pairs`, equal to :func:`~pluralign.training.logps.sequence_logps` of the
    same pairs in :class:`~pluralign.training.tokenization.PreferenceCollator`'s layout.

    With the completion-only head (``completion_head`` and a model it applies to), the LM head
    runs only on the scored tokens' source states; otherwise the model's own forward gives full
    logits, gathered at the same places.
    """
    rows, sources, targets, sequences = (batch[k] for k in SCORE_KEYS)
    input_ids, mask = batch["input_ids"], batch.get("attention_mask")
    attention = str(getattr(getattr(model, "config", None), "_attn_implementation", ""))
    if mask is not None and attention.startswith("flash"):
        raise ConfigError(
            f"share_prompt needs a custom attention mask, which {attention} does not take; "
            "set share_prompt false (padding_free works with flash attention) or load the model "
            "with attn_implementation='sdpa'"
        )
    split = _split_lm(model) if completion_head else None
    # A wrapped model (DDP/FSDP) gets one call per batch: each forward may run collectives (DDP
    # broadcasts buffers), so the processes must make the same number of calls.
    whole = ((0, input_ids.shape[0], input_ids.shape[1], len(rows)),)
    groups = batch.get("row_groups", whole) if split is not None else whole
    outputs, offset = [], 0
    for first, end, width, count in groups:
        kwargs = {
            "input_ids": input_ids[first:end, :width],
            "position_ids": batch["position_ids"][first:end, :width],
            "attention_mask": None
            if mask is None
            else _additive(mask[first:end, :, :width, :width], model),
            "use_cache": False,
        }
        at = (rows[offset : offset + count] - first, sources[offset : offset + count])
        offset += count
        if split is not None:
            outputs.append(split[0](**kwargs).last_hidden_state[at])
        else:
            outputs.append(model(**kwargs).logits[at])
    if split is not None:
        token_logps = head_token_logps(split[1], torch.cat(outputs), targets)
    else:
        logits = torch.cat(outputs)
        token_logps = -F.cross_entropy(_upcast(logits), targets, reduction="none")
    out = torch.zeros(
        batch["sequence_lengths"].shape[0], dtype=token_logps.dtype, device=token_logps.device
    )
    return out.index_add(0, sequences, token_logps)


def batch_sequence_logps(
    model: nn.Module, batch: Mapping[str, torch.Tensor], completion_head: bool = True
) -> torch.Tensor:
    """``[2B]`` summed completion log-probs of a collated batch in either layout: packed
    (:func:`pack_pairs`, recognised by its ``position_ids``) or padded
    (:class:`~pluralign.training.tokenization.PreferenceCollator`)."""
    if "position_ids" in batch:
        return packed_sequence_logps(model, batch, completion_head)
    return sequence_logps(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["completion_mask"],
        completion_head,
    )
