"""PNG figures of group-robust runs: per-group accuracy per method, group-weight trajectories."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pluralign.evaluation.plots import _save, _yerr, plt
from pluralign.evaluation.worst_group import WorstGroupSummary


def plot_group_accuracy(summaries: Mapping[str, WorstGroupSummary],
                        path: str | os.PathLike[str]) -> Path:
    """Grouped bars: held-out accuracy of every group per method, 95% CIs; dashes = micro."""
    methods = list(summaries)
    groups = [str(g) for g in summaries[methods[0]].accuracy.groups["group"]]
    width = 0.8 / max(len(groups), 1)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(methods), 3.6), layout="constrained")
    x = np.arange(len(methods))
    for j, g in enumerate(groups):
        rows = [summaries[m].accuracy.groups.set_index("group").loc[g] for m in methods]
        mean = [r["mean"] for r in rows]
        ax.bar(x + (j - (len(groups) - 1) / 2) * width, mean, width, label=g,
               yerr=_yerr(mean, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows]),
               capsize=3)
    for i, m in enumerate(methods):
        ax.hlines(summaries[m].accuracy.micro.mean, i - 0.4, i + 0.4, colors="k",
                  linestyles="--", label="average (micro)" if i == 0 else None)
    ax.set_xticks(x, methods)
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy (margin > 0)")
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_group_weights(steps: Sequence[int], weights: Mapping[str, Sequence[float]],
                       path: str | os.PathLike[str], title: str = "group weights α") -> Path:
    """Group weights α_g against the training step (one line per group)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4), layout="constrained")
    for name, values in weights.items():
        ax.plot(steps, values, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("α_g")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)
