"""PNG figures of the evaluation ([MixDPO, Fig. 2; Fig. 3/6; Fig. 4]; [COMPOSITION] composition
heatmap).

Every function takes the result objects of this package, writes one PNG atomically through
:func:`pluralign.io.atomic_path` (matplotlib's non-interactive Agg backend) and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pluralign.evaluation.diagnose import TrajectoryVerdict  # noqa: E402
from pluralign.evaluation.subgroups import SubgroupTable  # noqa: E402
from pluralign.io import atomic_path  # noqa: E402

MICRO_COLOR, MACRO_COLOR = "tab:blue", "tab:orange"


def _save(fig: plt.Figure, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def _yerr(mean, low, high) -> np.ndarray:
    """Error-bar lengths below/above the mean (clipped at 0 against rounding in collapsed CIs)."""
    mean, low, high = (np.atleast_1d(np.asarray(v, dtype=float)) for v in (mean, low, high))
    return np.clip(np.stack([mean - low, high - mean]), 0.0, None)


def _sizes(counts: np.ndarray, largest: float = 400.0) -> np.ndarray:
    """Marker areas proportional to subgroup counts."""
    counts = np.asarray(counts, dtype=float)
    return largest * counts / max(counts.max(), 1.0) + 10.0


def plot_subgroup_margins(table: SubgroupTable, path: str | os.PathLike[str],
                          title: str = "Subgroup mean preference margins") -> Path:
    """Fig. 2: subgroup means (marker area ∝ count, 95% CI bars), micro and macro lines.

    One panel per attribute; subgroups ordered by count (under-represented groups on the left).
    """
    groups = table.groups[~table.groups["empty"]]
    attrs = list(dict.fromkeys(groups["attribute"]))
    # Panel width follows the number of subgroups so that tick labels never collide.
    widths = [max(2.5, 0.6 * int((groups["attribute"] == a).sum())) for a in attrs]
    fig, axes = plt.subplots(1, len(attrs), figsize=(sum(widths) + 1.0, 4.0), squeeze=False,
                             sharey=True, layout="constrained",
                             gridspec_kw={"width_ratios": widths})
    for ax, attr in zip(axes[0], attrs, strict=True):
        g = groups[groups["attribute"] == attr].sort_values("count")
        x = np.arange(len(g))
        ax.errorbar(x, g["mean"], yerr=_yerr(g["mean"], g["ci_low"], g["ci_high"]),
                    fmt="none", ecolor="0.6", capsize=3, zorder=1)
        ax.scatter(x, g["mean"], s=_sizes(g["count"]), color="0.25", zorder=2,
                   edgecolors=np.where(g["small"], "red", "none"))
        ax.axhline(table.micro.mean, color=MICRO_COLOR, label=f"micro {table.micro.mean:.3g}")
        macro = table.macro_by_attribute.get(attr, table.macro)
        ax.axhline(macro.mean, color=MACRO_COLOR, label=f"macro {macro.mean:.3g}")
        ax.set_xticks(x, [f"{grp}\n(n={c})" for grp, c in zip(g["group"], g["count"],
                                                                 strict=True)],
                      rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_title(attr.split(".", 1)[-1])
        ax.legend(fontsize=8, loc="best")
    axes[0][0].set_ylabel(f"mean {table.value}")
    fig.suptitle(title)
    return _save(fig, path)


def plot_margin_gains(gains: Mapping[str, SubgroupTable], path: str | os.PathLike[str],
                      baseline: str = "DPO") -> Path:
    """Fig. 3 / 6: per-subgroup margin gains of each method over the baseline, then macro and micro.

    Faded points are subgroups (area ∝ count); squares are the macro and micro gains with 95%
    paired-bootstrap intervals.
    """
    methods = list(gains)
    first = next(iter(gains.values())).groups
    first = first[~first["empty"]]
    labels = [f"{a.split('.', 1)[-1]}={g}" for a, g in zip(first["attribute"], first["group"],
                                                          strict=True)]
    n = len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * (n + 3)), 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    width = 0.7 / max(len(methods), 1)
    for k, method in enumerate(methods):
        t = gains[method]
        g = t.groups[~t.groups["empty"]]
        offset = (k - (len(methods) - 1) / 2) * width
        color = colors[(k + 2) % len(colors)]
        ax.scatter(np.arange(n) + offset, g["mean"], s=_sizes(g["count"], 150), color=color,
                   alpha=0.45)
        for j, est in enumerate((t.macro, t.micro)):
            ax.errorbar(n + 1 + j + offset, est.mean,
                        yerr=_yerr(est.mean, est.ci_low, est.ci_high), fmt="s",
                        color=color, markersize=8, capsize=3,
                        label=method if j == 0 else None)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.axvline(n, color="0.8", lw=0.8)
    ax.set_xticks(list(range(n)) + [n + 1, n + 2], labels + ["macro", "micro"], rotation=45,
                  ha="right", fontsize=8)
    ax.set_ylabel(f"margin gain over {baseline}")
    ax.set_title(f"Preference margin gains over {baseline}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_variance_trajectories(trajectories: Mapping[str, TrajectoryVerdict],
                               path: str | os.PathLike[str],
                               title: str = "Learned β variance during training") -> Path:
    """Fig. 4: variance of the learned strength distribution over training steps, per dataset."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, tr in trajectories.items():
        ax.plot(tr.steps, tr.variance, label=f"{name} (diagnostic verdict: {tr.verdict})")
    ax.set_xlabel("training step")
    ax.set_ylabel("Var[β]")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_composition(matrix: pd.DataFrame, path: str | os.PathLike[str],
                     value: str = "mean margin") -> Path:
    """Heatmap: rows = group a model was trained on, columns = group it is evaluated on."""
    fig, ax = plt.subplots(figsize=(1.2 * matrix.shape[1] + 2.5, 0.8 * matrix.shape[0] + 1.8))
    data = matrix.to_numpy(dtype=float)
    im = ax.imshow(data, cmap="viridis", aspect="auto")
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            light = im.norm(data[i, j]) > 0.5        # viridis is bright at the top: dark text
            ax.text(j, i, f"{data[i, j]:.3g}", ha="center", va="center",
                    color="k" if light else "w", fontsize=8)
    ax.set_xticks(range(matrix.shape[1]), [str(c) for c in matrix.columns], rotation=30,
                  ha="right")
    ax.set_yticks(range(matrix.shape[0]), [str(r) for r in matrix.index])
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("trained on")
    fig.colorbar(im, ax=ax, label=value)
    ax.set_title("Composition matrix")
    return _save(fig, path)
