"""Agreement between two partitions: the adjusted Rand index (used to score PAL's recovered
groups)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pluralign.errors import PluralignError


def _comb2(x: np.ndarray) -> np.ndarray:
    return x * (x - 1) / 2.0


def contingency_table(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> np.ndarray:
    """``n_ij`` = number of items with true label i and predicted label j (labels in sorted
    order)."""
    true = np.asarray([str(x) for x in labels_true])
    pred = np.asarray([str(x) for x in labels_pred])
    if true.shape != pred.shape:
        raise PluralignError(f"{len(true)} true labels but {len(pred)} predicted labels")
    _, t = np.unique(true, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    table = np.zeros((t.max(initial=-1) + 1, p.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (t, p), 1)
    return table


def adjusted_rand_index(labels_true: Sequence[Any], labels_pred: Sequence[Any]) -> float:
    """Adjusted Rand index of two partitions (Hubert & Arabie 1985), from the contingency table:

        ARI = (Σ_ij C(n_ij, 2) − E) / (½[Σ_i C(a_i, 2) + Σ_j C(b_j, 2)] − E),
        E   = Σ_i C(a_i, 2) · Σ_j C(b_j, 2) / C(n, 2),

    with row sums a_i and column sums b_j. 1 for identical partitions (up to relabeling), about 0
    for independent ones. When the denominator vanishes (both partitions a single cluster, or both
    all singletons) the partitions are identical and 1.0 is returned, as scikit-learn does.
    """
    table = contingency_table(labels_true, labels_pred)
    n = int(table.sum())
    if n < 2:
        raise PluralignError("the adjusted Rand index needs at least two labelled items")
    index = _comb2(table).sum()
    rows, cols = _comb2(table.sum(1)).sum(), _comb2(table.sum(0)).sum()
    expected = rows * cols / _comb2(np.float64(n))
    maximum = 0.5 * (rows + cols)
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))
