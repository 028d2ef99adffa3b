"""Per-pair preference margins of a policy on labelled pairs ([MixDPO, §4.4] "Preference Margin").

For pair ``i`` with prompt ``x``, chosen ``y_w`` and rejected ``y_l``:

    logp_margin_i = log π_θ(y_w | x) − log π_θ(y_l | x)                (the paper's §4.4 margin)
    margin_i      = [log π_θ(y_w|x) − log π_ref(y_w|x)] − [log π_θ(y_l|x) − log π_ref(y_l|x)]
                                                                      (DPO implicit reward, eq. 2)

(``margin`` equals ``logp_margin`` when no reference model is given.) Log-probabilities are sums
over completion tokens, computed exactly as in training: same tokenisation
(:func:`pluralign.training.tokenize_pair`, whose prompt ids come from
:func:`pluralign.training.tokenization.prompt_token_ids`, as generation's do), collator and
:func:`pluralign.training.sequence_logps`.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pluralign.data import to_pandas
from pluralign.evaluation.errors import EvaluationError
from pluralign.training.logps import sequence_logps
from pluralign.training.tokenization import (
    TOKEN_COLUMNS,
    PreferenceCollator,
    tokenize_pair,
)
from pluralign.validation import COUNT, INDEX, check_fields, check_lengths

#: Text columns left out of the margins table (they are in the dataset; the table stays light).
_TEXT_COLUMNS = ("prompt", "chosen", "rejected")


def preference_margins(
    model: PreTrainedModel,
    ref_model: PreTrainedModel | None,
    dataset: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    *,
    batch_size: int = 32,
    max_length: int = 128,
    max_prompt_length: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per pair: margins, the four summed log-probs, and every non-text dataset column.

    Annotator attributes and context appear as ``attr.<name>`` / ``ctx.<name>`` columns
    (:func:`pluralign.data.to_pandas`), ready for :func:`subgroup_table`. Runs without gradients,
    in batches, with a progress bar. ``max_length`` / ``max_prompt_length`` should match training.
    """
    check_lengths(max_length, max_prompt_length, "preference_margins")
    missing = [c for c in _TEXT_COLUMNS if c not in dataset.column_names]
    if missing:
        raise EvaluationError(f"dataset lacks column(s) {missing}; preference_margins needs "
                              "'prompt', 'chosen' and 'rejected'")
    if len(dataset) == 0:
        raise EvaluationError("dataset has no pairs to evaluate")
    tokens = dataset.select_columns(list(_TEXT_COLUMNS)).map(
        tokenize_pair, remove_columns=list(_TEXT_COLUMNS), desc="Tokenizing pairs",
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length,
                   "max_prompt_length": max_prompt_length})
    tokens = tokens.select_columns(list(TOKEN_COLUMNS))
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    loader = DataLoader(tokens, batch_size=batch_size, shuffle=False,
                        collate_fn=PreferenceCollator(pad_id))
    device = next(model.parameters()).device
    columns: dict[str, list[float]] = {k: [] for k in ("policy_chosen_logps",
                                                       "policy_rejected_logps",
                                                       "ref_chosen_logps", "ref_rejected_logps")}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc="Preference margins", disable=not progress):
                args = [batch[k].to(device) for k in ("input_ids", "attention_mask",
                                                       "completion_mask")]
                chosen, rejected = sequence_logps(model, *args).double().chunk(2)
                columns["policy_chosen_logps"] += chosen.tolist()
                columns["policy_rejected_logps"] += rejected.tolist()
                if ref_model is not None:
                    ref_args = [a.to(next(ref_model.parameters()).device) for a in args]
                    rc, rr = sequence_logps(ref_model, *ref_args).double().chunk(2)
                    columns["ref_chosen_logps"] += rc.tolist()
                    columns["ref_rejected_logps"] += rr.tolist()
    finally:
        model.train(was_training)
    frame = to_pandas(dataset.remove_columns(list(_TEXT_COLUMNS)))
    pc = np.asarray(columns["policy_chosen_logps"])
    pr = np.asarray(columns["policy_rejected_logps"])
    frame["policy_chosen_logps"], frame["policy_rejected_logps"] = pc, pr
    frame["logp_margin"] = pc - pr
    if ref_model is not None:
        rc = np.asarray(columns["ref_chosen_logps"])
        rr = np.asarray(columns["ref_rejected_logps"])
        frame["ref_chosen_logps"], frame["ref_rejected_logps"] = rc, rr
        frame["margin"] = (pc - rc) - (pr - rr)
    else:
        frame["margin"] = frame["logp_margin"]
    return frame


@dataclass
class ScoringConfig:
    """How the commands that score held-out pairs (``evaluate``, ``experiment composition``)
    score and summarise them.

    Attributes:
        max_length: prompt + completion token limit of the margins.
        max_prompt_length: prompt token limit of the margins.
        batch_size: scoring batch size.
        n_boot: bootstrap resamples of every interval.
        seed: seed of the bootstrap.
    """

    max_length: int = 128
    max_prompt_length: int = 64
    batch_size: int = 32
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self, {"batch_size": COUNT, "n_boot": COUNT, "seed": INDEX})
        check_lengths(self.max_length, self.max_prompt_length, type(self).__name__)

    def margins(self, model: PreTrainedModel, ref_model: PreTrainedModel | None,
                dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase,
                progress: bool = True) -> pd.DataFrame:
        """:func:`preference_margins` with these limits and batch size."""
        return preference_margins(model, ref_model, dataset, tokenizer,
                                  batch_size=self.batch_size, max_length=self.max_length,
                                  max_prompt_length=self.max_prompt_length, progress=progress)
