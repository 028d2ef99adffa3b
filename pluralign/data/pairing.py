"""Datasets with annotator structure that the DAHP methods need ([DAHP, §5.3; §6]).

* :func:`paired_preferences` — two comparisons labelled by the *same* annotator per row, the data a
  joint-likelihood model needs to estimate the variance term of first-order-corrected DPO
  ([DAHP, §5.3; Eq. 19]).
* :func:`full_information_items` — every user type labels the same item; per-type labels and an
  agreement flag (+1: all types preferred ``chosen``; −1: all preferred ``rejected``; 0: they
  disagree), the input of the consistent agreement-only loss ([DAHP, §6; Eq. 20]).
  Built either from a synthetic :class:`~pluralign.data.synthetic.Population` (each type labels each
  item from the ground-truth rewards) or from any dataset whose items were labelled by several
  annotators, grouped into "types" by a column or an annotator attribute.
"""

from __future__ import annotations

import logging

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.special import expit

from pluralign.data.schema import (
    column_array,
    dataset_from_table,
    mapping_array,
    schema_error,
    validate,
)
from pluralign.data.splits import attribute_values
from pluralign.data.synthetic import Population
from pluralign.errors import ConfigError

logger = logging.getLogger(__name__)

SHARED_COLUMNS = ("annotator_id", "attributes")


def paired_preferences(ds: datasets.Dataset, seed: int = 0) -> datasets.Dataset:
    """Pair up comparisons of the same annotator: one row per two comparisons of one annotator.

    Each annotator's rows are shuffled (``seed``) and taken two at a time, so an annotator with n
    comparisons yields ⌊n/2⌋ disjoint rows. Output columns: ``annotator_id`` and ``attributes``
    (shared), and every other input column twice, suffixed ``_1`` and ``_2`` (``prompt_1``,
    ``chosen_1``, ``rejected_1``, ``item_id_1``, …, ``prompt_2``, …; synthetic ground truth such
    as ``true_margin_1`` travels along). Rows without an annotator id and the odd leftover row of
    an annotator are dropped; both counts are logged.
    """
    ids = column_array(ds, "annotator_id")
    codes = ids.dictionary_encode().combine_chunks()
    annotator = codes.indices.to_numpy(zero_copy_only=False)
    valid = ~np.asarray(pc.is_null(ids).to_numpy(zero_copy_only=False), dtype=bool)
    n_anonymous = int((~valid).sum())
    rows = np.flatnonzero(valid)
    rng = np.random.default_rng(seed)
    rows = rows[rng.permutation(len(rows))]
    rows = rows[np.argsort(annotator[rows], kind="stable")]  # grouped by annotator, shuffled within
    group = annotator[rows]
    rank = np.arange(len(rows)) - np.searchsorted(group, group, side="left")
    second_pos = np.flatnonzero(rank % 2 == 1)
    first = rows[second_pos - 1]
    second = rows[second_pos]
    n_odd = len(rows) - 2 * len(second)
    logger.info("paired_preferences: %d rows from %d comparisons; dropped %d without annotator "
                "id and %d odd leftovers", len(second), len(ds), n_anonymous, n_odd)
    first, second = pa.array(first), pa.array(second)
    shared, one, two = {}, {}, {}
    for c in ds.column_names:
        column = column_array(ds, c).combine_chunks()  # take on chunked strings is ~7x slower
        if c in SHARED_COLUMNS:
            shared[c] = pc.take(column, first)
        else:
            one[f"{c}_1"] = pc.take(column, first)
            two[f"{c}_2"] = pc.take(column, second)
    return dataset_from_table(pa.table({**shared, **one, **two}))


def _orient_and_flag(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Orientation (True: keep response A as chosen) and agreement flags from (n_items, T) labels.

    ``labels[i, t]`` is 1 when type t preferred A, 0 when it preferred B, 0.5 for a tie within
    the type. Rows are oriented toward the majority (random on a tie), so once oriented an item
    with consensus has agreement +1 and an item without consensus 0.
    """
    mean = labels.mean(axis=1)
    keep = np.where(mean == 0.5, rng.random(len(mean)) < 0.5, mean > 0.5)
    unanimous = np.all(labels == 1.0, axis=1) | np.all(labels == 0.0, axis=1)
    return keep, np.where(unanimous, 1, 0).astype(np.int8)


def full_information_items(source: Population | datasets.Dataset, *, by: str = "type_id",
                           beta: float | None = None, until_consensus: bool = False,
                           max_rounds: int = 100, seed: int = 0) -> datasets.Dataset:
    """Items labelled by every user type, with per-type labels and agreement flags.

    From a :class:`Population`: every distinct item of ``population.dataset`` (prompt and
    unordered response pair) is labelled once by each type t with
    ``P(t prefers a) = σ(β_t (r_t(a) − r_t(b)))``, β_t = the mean β of the type's annotators (or
    ``beta``). With ``until_consensus`` all types relabel the item until they agree ([DAHP, §7]:
    "sample the preferences of the three user types until a consensus is reached"); items still
    split after ``max_rounds`` are dropped with a logged count. Extra column
    ``true_average_margin`` = Σ_t p_t (r_t(chosen) − r_t(rejected)).

    From a dataset: items are rows sharing ``item_id``; types are the values of ``by`` (a column,
    else an annotator attribute); only items labelled by at least one annotator of every type are
    kept (count logged); a type's label is the majority of its annotators (0.5 on a tie).

    Output: schema columns oriented toward the majority of types, plus ``type_labels`` (list of
    floats in the sorted type order: 1 = that type preferred ``chosen``) and ``agreement`` (int8:
    +1 every type preferred ``chosen``, 0 disagreement; −1 cannot occur after orientation).
    """
    rng = np.random.default_rng(seed)
    if isinstance(source, Population):
        return _from_population(source, beta, until_consensus, max_rounds, rng)
    if until_consensus:
        raise ConfigError("until_consensus needs a synthetic Population (labels must be redrawn)")
    return _from_dataset(source, by, rng)


def _from_population(pop: Population, beta: float | None, until_consensus: bool,
                     max_rounds: int, rng: np.random.Generator) -> datasets.Dataset:
    truth = pop.truth
    frame = pop.dataset.select_columns(
        ["item_id", "prompt_id", "chosen_id", "rejected_id", "context"]).to_pandas()
    items = frame.drop_duplicates("item_id", ignore_index=True)
    a = np.minimum(items.chosen_id, items.rejected_id).to_numpy()
    b = np.maximum(items.chosen_id, items.rejected_id).to_numpy()
    if beta is None:
        sums = np.bincount(truth.annotator_type, weights=truth.annotator_beta,
                           minlength=truth.n_types)
        counts = np.bincount(truth.annotator_type, minlength=truth.n_types)
        betas = np.where(counts > 0, sums / np.maximum(counts, 1), truth.annotator_beta.mean())
    else:
        betas = np.full(truth.n_types, float(beta))
    diff = truth.type_rewards(a) - truth.type_rewards(b)  # (T, n)
    prob_a = expit(betas[:, None] * diff).T  # (n, T)
    labels = (rng.random(prob_a.shape) < prob_a).astype(float)
    if until_consensus:
        for _ in range(max_rounds):
            split = ~(np.all(labels == 1, axis=1) | np.all(labels == 0, axis=1))
            if not split.any():
                break
            labels[split] = (rng.random((int(split.sum()), truth.n_types)) < prob_a[split])
        unanimous = np.all(labels == 1, axis=1) | np.all(labels == 0, axis=1)
        logger.info("full_information_items: dropped %d of %d items without consensus after "
                    "%d rounds", int((~unanimous).sum()), len(items), max_rounds)
        items, a, b, labels = items[unanimous], a[unanimous], b[unanimous], labels[unanimous]
    keep, agreement = _orient_and_flag(labels, rng)
    chosen, rejected = np.where(keep, a, b), np.where(keep, b, a)
    oriented = np.where(keep[:, None], labels, 1.0 - labels)
    avg = truth.average_reward(chosen) - truth.average_reward(rejected)
    prompts, responses = pop.text_arrays()
    table = pa.table({
        "prompt": pc.take(prompts, pa.array(items.prompt_id.to_numpy())),
        "chosen": pc.take(responses, pa.array(chosen)),
        "rejected": pc.take(responses, pa.array(rejected)),
        "annotator_id": pa.nulls(len(chosen), pa.string()),
        "attributes": pa.array(["{}"] * len(chosen)),
        "context": mapping_array(items.context.tolist()),
        "item_id": pa.array(items.item_id.tolist(), type=pa.string()),
        "type_labels": pa.array(oriented.tolist(), type=pa.list_(pa.float64())),
        "agreement": pa.array(agreement),
        "true_average_margin": pa.array(avg),
        "chosen_id": pa.array(chosen.astype(np.int32)),
        "rejected_id": pa.array(rejected.astype(np.int32)),
    })
    return validate(dataset_from_table(table), source="full_information_items")


def _from_dataset(ds: datasets.Dataset, by: str, rng: np.random.Generator) -> datasets.Dataset:
    if by in ds.column_names:
        groups = np.asarray(column_array(ds, by).to_pylist(), dtype=object)
    else:
        groups = attribute_values(ds, by)
    missing = np.flatnonzero([g is None for g in groups])
    if len(missing):
        raise schema_error("full_information_items", int(missing[0]), by,
                           f"no value for the type key {by!r}; every row needs one")
    types = sorted({str(g) for g in groups})
    items = column_array(ds, "item_id").to_pylist()
    chosen_texts = column_array(ds, "chosen").to_pylist()
    reference: dict[str, object] = {}
    for item, text in zip(items, chosen_texts, strict=True):
        reference.setdefault(item, text)
    frame = pd.DataFrame({
        "item": items, "type": [str(g) for g in groups],
        "wins": [float(text == reference[item])
                 for item, text in zip(items, chosen_texts, strict=True)],
    })
    votes = frame.pivot_table(index="item", columns="type", values="wins", aggfunc="mean")
    votes = votes.reindex(columns=types)
    complete = votes.notna().all(axis=1)
    logger.info("full_information_items: kept %d of %d items labelled by all %d types %s",
                int(complete.sum()), len(votes), len(types), types)
    votes = votes[complete]
    if votes.empty:
        raise ConfigError(f"no item was labelled by every type of {by!r} ({types}); "
                          "full-information items need overlapping annotations")
    labels = np.where(votes.to_numpy() > 0.5, 1.0, np.where(votes.to_numpy() < 0.5, 0.0, 0.5))
    keep, agreement = _orient_and_flag(labels, rng)
    first_row = frame.reset_index().drop_duplicates("item").set_index("item")["index"]
    base = ds.select(first_row.loc[votes.index].to_numpy())
    base_columns = {c: column_array(base, c).to_pylist()
                    for c in ("prompt", "chosen", "rejected", "context", "item_id")}
    pairs = list(zip(base_columns["chosen"], base_columns["rejected"], strict=True))
    chosen = [c if k else r for (c, r), k in zip(pairs, keep, strict=True)]
    rejected = [r if k else c for (c, r), k in zip(pairs, keep, strict=True)]
    oriented = np.where(keep[:, None], labels, 1.0 - labels)
    out = datasets.Dataset.from_dict({
        "prompt": base_columns["prompt"], "chosen": chosen, "rejected": rejected,
        "annotator_id": [None] * len(base), "attributes": ["{}"] * len(base),
        "context": base_columns["context"], "item_id": base_columns["item_id"],
        "type_labels": oriented.tolist(), "agreement": agreement.tolist(),
    })
    return validate(out, source="full_information_items")
