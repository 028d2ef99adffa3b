"""Panel vs per-pair power table for the README (issue 22, item 3).

Power to separate CV² 0.5 from 1.0 (Gamma β per annotator, true margins Δ ~ N(0, 2²), E[β] = 1)
with the sandwich Wald test of ``compare_heterogeneity`` (``cv2_difference_test``), at 1, 5 and
20 pairs per annotator, for the per-pair likelihood (eq. 3, annotator-clustered standard errors)
and the panel likelihood (one β per annotator). With one pair per annotator the two likelihoods
are the same function. Cheap on purpose: ``SIMS`` simulated pairs of populations per cell, so each
power has a Clopper–Pearson interval of about ±0.2; the table prints it.

Run: ``nice -n 10 python bench/panel_power.py`` (about 10 minutes on one loaded core). Writes
``bench/results/panel_power.md``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from machine import machine

from pluralign.evaluation.power import separation_power

PAIRS = (1000, 4000)
DESIGNS = ((1, "per-pair"), (5, "per-pair"), (5, "panel"), (20, "per-pair"), (20, "panel"))
SIMS = 16


def main() -> None:
    torch.set_num_threads(1)
    header = ["pairs per population"] + [f"{k} pair{'s' if k > 1 else ''}/annotator, {lik}"
                                         for k, lik in DESIGNS]
    lines = [f"machine: {machine()}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in PAIRS:
        cells = []
        for k, lik in DESIGNS:
            r = separation_power(n, 1.0, 0.5, pairs_per_annotator=k, likelihood=lik,
                                 n_sims=SIMS, seed=n + k)
            cells.append(f"{r.power:.2f} ({r.power_ci[0]:.2f}–{r.power_ci[1]:.2f})")
            print(n, k, lik, cells[-1], flush=True)
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    lines += ["", f"{SIMS} simulated pairs of populations per cell (95% Clopper–Pearson interval "
              "in brackets); CV² 0.5 vs 1.0, Gamma β per annotator, Δ ~ N(0, 2²), mean β 1."]
    out = Path(__file__).resolve().parent / "results" / "panel_power.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
