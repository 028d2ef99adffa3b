"""Plots of the NBC analysis: bump chart ([DAHP, Fig. 1]) and CDF of min TV (Fig. 2)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pluralign.io import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def plot_bump(options: pd.DataFrame, question: str, path: str | Path) -> Path:
    """Rank of each option by average reward, NBC (uniform) and NBC (flipping distribution).

    ``options`` holds one question's rows of ``options.csv`` (columns option, avg_reward,
    nbc_uniform, nbc_flipped); rank 1 is drawn at the top.
    """
    columns = [("avg_reward", "average reward"), ("nbc_uniform", "NBC, uniform μ"),
               ("nbc_flipped", "NBC, min-TV μ'")]
    columns = [(c, label) for c, label in columns if options[c].notna().all()]
    ranks = {c: options[c].rank(ascending=False, method="first").to_numpy() for c, _ in columns}
    fig, ax = plt.subplots(figsize=(2.2 * len(columns) + 2, 0.6 * len(options) + 2))
    xs = np.arange(len(columns))
    for k, label in enumerate(options["option"]):
        ys = [ranks[c][k] for c, _ in columns]
        ax.plot(xs, ys, marker="o", lw=2)
        ax.annotate(str(label), (xs[-1], ys[-1]), xytext=(8, 0), textcoords="offset points",
                    va="center")
        ax.annotate(str(label), (xs[0], ys[0]), xytext=(-8, 0), textcoords="offset points",
                    va="center", ha="right")
    ax.set_xticks(xs, [label for _, label in columns])
    ax.set_yticks(np.arange(1, len(options) + 1))
    ax.invert_yaxis()
    ax.set_ylabel("rank")
    ax.set_title(f"question {question}")
    ax.set_xlim(-0.6, len(columns) - 0.4)
    return _save(fig, path)


def plot_min_tv_cdf(min_tv: np.ndarray, path: str | Path) -> Path:
    """Empirical CDF over questions of the min TV that changes the NBC ranking (``inf`` = never).

    The curve ends below 1 when some questions cannot be changed by any distribution.
    """
    values = np.sort(np.asarray(min_tv, dtype=float))
    finite = values[np.isfinite(values)]
    fig, ax = plt.subplots(figsize=(5, 4))
    if len(values):
        ax.step(finite, np.arange(1, len(finite) + 1) / len(values), where="post")
    ax.set_xlabel("min TV distance from uniform to change the NBC ranking")
    ax.set_ylabel("fraction of questions")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    return _save(fig, path)
