"""The per-pair ``group`` column and the group shares a group-robust objective trains with.

The objective (:class:`~pluralign.group_robust.GroupRobustObjective`, objectives layer) only
declares what defines a group (``group_by``) and the column it reads; building that column from
the datasets is data work (:mod:`pluralign.data.groups`), done here for the trainer, which then
tells the objective its groups through the objective's own :meth:`set_groups` and
:meth:`set_group_counts`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pluralign.data.groups import add_group_column
from pluralign.group_robust import GroupRobustObjective
from pluralign.objectives import Objective


def prepare_groups(objective: Objective, train: Any, evaluation: Any) -> tuple[Any, Any]:
    """The training and evaluation datasets (either may be None) with the objective's group
    column, and the objective told its groups; any other objective leaves both unchanged.

    With ``objective.group_by`` the column is built by
    :func:`~pluralign.data.groups.add_group_column` on the training split, and the evaluation
    split maps its values through the training split's name table (so ids agree); K, the names
    and the training counts ``N_g`` come from the training split. Without it an existing integer
    column is used as is (K = largest id + 1, names ``"0"``, ``"1"``, ...).
    """
    if not isinstance(objective, GroupRobustObjective) or train is None:
        return train, evaluation
    column = objective.column
    if objective.group_by:
        train, groups = add_group_column(train, objective.group_by, column)
        if evaluation is not None:
            evaluation, _ = add_group_column(evaluation, objective.group_by, column,
                                             names=groups.names)
        objective.set_groups(len(groups.names), groups.names)
        objective.set_group_counts(groups.counts().tolist())
    elif column in train.column_names:
        counts = np.bincount(np.asarray(train[column], dtype=np.int64))
        if counts.size != objective.num_groups:
            objective.set_groups(counts.size)
        objective.set_group_counts(counts.tolist())
    return train, evaluation
