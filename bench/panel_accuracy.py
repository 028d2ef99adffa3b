"""Accuracy of the panel kernel ``log E_β Π_j σ(βΔ_j)`` against mpmath (issue 22, item 1).

Grid: 1–500 pairs per annotator, margins ``±10^U(−4, 2)`` (both signs, |Δ| from 1e-4 to 100),
CV² ∈ {0.01, 0.1, 1, 10}, E[β] ∈ {0.03, 1, 30}, Gamma and LogNormal. For each cell it prints and
plots max |Δ log E| (= relative error of E) of :mod:`pluralign.panel` in float64 vs the mpmath
reference of the tests (``tests/mp_reference.py``, 20 digits). Writes
``docs/panel_kernel_accuracy.png`` and ``bench/results/panel_accuracy.txt``.

Run: ``nice -n 10 python bench/panel_accuracy.py`` (a few minutes on 1 core; mpmath dominates).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import mp_reference as ref  # noqa: E402

from pluralign.panel import log_panel_likelihood  # noqa: E402

PAIRS = (1, 5, 20, 100, 500)
CV2 = (0.01, 0.1, 1.0, 10.0)
MEANS = (0.03, 1.0, 30.0)


def params(family: str, cv2: float, mean: float) -> dict[str, float]:
    if family == "gamma":
        return {"shape": 1 / cv2, "rate": 1 / (cv2 * mean)}
    s2 = math.log1p(cv2)
    return {"mu": math.log(mean) - s2 / 2, "sigma": math.sqrt(s2)}


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    errors = {f: np.zeros((len(PAIRS), len(CV2))) for f in ("gamma", "lognormal")}
    lines = [f"machine: {machine()}", "family n_pairs cv2 mean log_E_mpmath abs_err_log_E"]
    for family, table in errors.items():
        for i, n in enumerate(PAIRS):
            for j, cv2 in enumerate(CV2):
                for mean in MEANS:
                    margins = rng.choice([-1.0, 1.0], n) * 10 ** rng.uniform(-4, 2, n)
                    p = params(family, cv2, mean)
                    got = float(log_panel_likelihood(torch.tensor(margins),
                                                     torch.zeros(n, dtype=torch.long),
                                                     family, **p)[0])
                    exact = float(ref.panel_log_likelihood(margins, family, p))
                    err = abs(got - exact)
                    table[i, j] = max(table[i, j], err)
                    lines.append(f"{family} {n} {cv2} {mean} {exact:.12g} {err:.3g}")
                    print(lines[-1], flush=True)
    worst = max(t.max() for t in errors.values())
    lines.append(f"max |Δ log E| over the grid: {worst:.3g}")
    print(lines[-1])
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "panel_accuracy.txt").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, (family, table) in zip(axes, errors.items(), strict=True):
        for j, cv2 in enumerate(CV2):
            ax.semilogy(PAIRS, np.maximum(table[:, j], 1e-17), "o-", label=f"CV² = {cv2:g}")
        ax.axhline(1e-10, color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_title(f"{family}: max over E[β] ∈ {{0.03, 1, 30}}")
        ax.set_xlabel("pairs per annotator")
    axes[0].set_ylabel("max |Δ log E| vs mpmath (float64)")
    axes[0].legend(fontsize=8)
    fig.suptitle("Panel kernel log E_β Π_j σ(βΔ_j): error vs mpmath (dashed: 1e-10 target; "
                 "floored at 1e-17)", fontsize=9)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "panel_kernel_accuracy.png", dpi=120)


if __name__ == "__main__":
    main()
