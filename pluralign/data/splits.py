"""Train/test splits and subgroup subsets of a preference dataset.

* :func:`train_test_split_pairs` — random split by pair (seen annotators in both parts).
* :func:`split_by_annotator` — held-out annotators (unseen-user evaluation, [PAL]; LoRe's PRISM
  protocol splits users the same way).
* :func:`filter_by_attribute` — rows whose annotator attribute (or context key) takes given values.
* :func:`size_matched_subsets` — one equally sized subset per attribute value, for composition
  experiments (train on group A vs group B with the same n; [COMPOSITION]).

All functions are deterministic for a given ``seed`` and never modify their input.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pluralign.data.schema import column_array, mapping_struct, object_values, schema_error
from pluralign.errors import ConfigError
from pluralign.validation import check_number

logger = logging.getLogger(__name__)


def _check_fraction(test_size: object) -> None:
    check_number(test_size, "test_size", minimum=0, maximum=1, exclusive_minimum=True,
                 exclusive_maximum=True)


def train_test_split_pairs(ds: datasets.Dataset, test_size: float = 0.2,
                           seed: int = 0) -> datasets.DatasetDict:
    """Random split by pair: ``DatasetDict(train, test)``, ``round(test_size·n)`` test rows."""
    _check_fraction(test_size)
    order = np.random.default_rng(seed).permutation(len(ds))
    n_test = int(round(test_size * len(ds)))
    if n_test == 0 or n_test == len(ds):
        raise ConfigError(f"test_size={test_size} leaves an empty split of {len(ds)} pairs")
    return datasets.DatasetDict(train=ds.select(np.sort(order[n_test:])),
                                test=ds.select(np.sort(order[:n_test])))


def split_by_annotator(ds: datasets.Dataset, test_size: float = 0.2,
                       seed: int = 0) -> datasets.DatasetDict:
    """Split by annotator: a fraction ``test_size`` of annotators (rounded, at least one) and all
    their pairs go to ``test``; no annotator appears in both parts.

    Raises:
        SchemaError: when a row has no ``annotator_id`` (e.g. HH-RLHF): split by pair instead.
    """
    _check_fraction(test_size)
    ids = column_array(ds, "annotator_id")
    missing = pc.index(pc.is_null(ids), True).as_py()
    if missing != -1:
        raise schema_error("split_by_annotator", missing, "annotator_id",
                           "no annotator id; use train_test_split_pairs for anonymous data")
    annotators = np.asarray(pc.unique(ids).to_pylist(), dtype=object)
    annotators.sort()
    if len(annotators) < 2:
        raise ConfigError("split_by_annotator needs at least two annotators")
    n_test = min(max(1, int(round(test_size * len(annotators)))), len(annotators) - 1)
    held_out = np.random.default_rng(seed).permutation(annotators)[:n_test]
    in_test = pc.is_in(ids, value_set=pa.array(held_out.tolist(), type=pa.string()))
    mask = np.asarray(in_test.to_numpy(zero_copy_only=False), dtype=bool)
    return datasets.DatasetDict(train=ds.select(np.flatnonzero(~mask)),
                                test=ds.select(np.flatnonzero(mask)))


def attribute_values(ds: datasets.Dataset, name: str, field: str = "attributes") -> np.ndarray:
    """Value of key ``name`` of ``attributes`` (or ``context``) for every row (None when absent).

    Reads the struct field directly (any accepted storage of the column works), so it is fast
    on large synthetic datasets.
    """
    struct = mapping_struct(column_array(ds, field), "<dataset>", field)
    if struct.type.get_field_index(name) < 0:
        return np.full(len(ds), None, dtype=object)
    return object_values(struct.field(name))


def filter_by_attribute(ds: datasets.Dataset, name: str, values: str | Iterable[str],
                        field: str = "attributes") -> datasets.Dataset:
    """Rows whose ``field`` ("attributes" or "context") key ``name`` is one of ``values``."""
    wanted = {values} if isinstance(values, str) else set(values)
    column = attribute_values(ds, name, field)
    keep = np.flatnonzero([v in wanted for v in column])
    logger.info("filter_by_attribute %s.%s in %s: kept %d of %d pairs", field, name,
                sorted(wanted), len(keep), len(ds))
    return ds.select(keep)


def size_matched_subsets(ds: datasets.Dataset, attribute: str, n: int | None = None,
                         seed: int = 0, values: Iterable[str] | None = None,
                         field: str = "attributes") -> dict[str, datasets.Dataset]:
    """One random subset of exactly ``n`` pairs per value of ``attribute`` (default: every value
    present; ``n`` defaults to the smallest group's size), so groups can be compared at equal n.

    Raises:
        ConfigError: when a group has fewer than ``n`` pairs or no group is found.
    """
    column = attribute_values(ds, attribute, field)
    groups = sorted({v for v in column if v is not None}) if values is None else list(values)
    if not groups:
        raise ConfigError(f"no pairs carry the {field} key {attribute!r}")
    members = {g: np.flatnonzero(column == g) for g in groups}
    sizes = {g: len(m) for g, m in members.items()}
    absent = [g for g, size in sizes.items() if size == 0]
    if absent:
        present = sorted({str(v) for v in column if v is not None})
        raise ConfigError(f"size_matched_subsets: no pairs with {attribute}={absent}; values "
                          f"present: {present}")
    n = min(sizes.values()) if n is None else n
    short = {g: s for g, s in sizes.items() if s < n}
    if short or n < 1:
        raise ConfigError(f"size_matched_subsets: n={n} exceeds these group sizes {short}; pass a "
                          "smaller n or fewer values")
    rng = np.random.default_rng(seed)
    return {g: ds.select(np.sort(rng.choice(members[g], size=n, replace=False))) for g in groups}
