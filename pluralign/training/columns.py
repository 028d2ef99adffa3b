"""The per-pair columns an objective declares, made ready for it before training.

Every objective says which columns its batches carry (:meth:`Objective.columns
<pluralign.objectives.Objective.columns>`), and for an integer id column (a group, an annotator)
what defines the ids. The objective (objectives layer) only declares; building an id column from
the datasets is data work (:func:`pluralign.data.groups.add_group_column`), done here for the
trainer, the same way for every objective, which then hears the training split's pairs per id
through :meth:`Objective.set_ids <pluralign.objectives.Objective.set_ids>`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pluralign.data.groups import add_group_column
from pluralign.objectives import Objective


def prepare_columns(objective: Objective, train: Any, evaluation: Any) -> tuple[Any, Any]:
    """The training and evaluation datasets (either may be None) with the id columns the
    objective derives, and the objective told the training split's pairs per id.

    For an id column with ``ids_from`` the column is built by
    :func:`~pluralign.data.groups.add_group_column` on the training split, and the evaluation
    split maps its values through the training split's name table (so ids agree; a ``whole``
    column's evaluation ids are built on their own, as they only group pairs within a batch); the
    counts and names come from the training split. An id column without ``ids_from`` that the
    training data already carry is counted as it is (K = largest id + 1). Value columns, and id
    columns the data lack, are left for the trainer's column check to report. Without training
    data nothing changes.
    """
    if train is None:
        return train, evaluation
    for column in objective.columns():
        if not column.ids:
            continue
        if column.ids_from:
            train, ids = add_group_column(train, column.ids_from, column.name)
            if evaluation is not None:
                evaluation, _ = add_group_column(evaluation, column.ids_from, column.name,
                                                 names=None if column.whole else ids.names)
            objective.set_ids(column.name, ids.counts().tolist(), ids.names)
        elif column.name in train.column_names:
            counts = np.bincount(np.asarray(train[column.name], dtype=np.int64))
            objective.set_ids(column.name, counts.tolist(), None)
    return train, evaluation
