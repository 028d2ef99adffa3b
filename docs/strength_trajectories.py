"""Defect 7 of issue 12: learned CV² trajectories of MixDPO strengths under joint training.

A stand-in for the demo's language model that keeps the one property that matters here: the
policy's margins start at 0 (policy = reference) and grow while the strength distribution is
trained with them. Each pair's margin is ``Δ_i = s · Δ*_i`` with ``Δ*`` the synthetic population's
*true* margin (oriented chosen − rejected) and ``s`` a learnable scale starting at 1e-3; the loss
is MixDPO's ``−log E_β σ(β Δ_i)`` ([MixDPO, Eq. 3]), full batch, Adam on ``s`` and the strength's
raw parameters (the paper's optimiser family), for every (family, population, parameterization,
learning rate). Run from the repository root:

    PYTHONPATH=$PWD python docs/strength_trajectories.py

and it prints the table in docs/diagnostic.md (final CV² = Var/mean² at a few steps).
"""

from __future__ import annotations

import numpy as np
import torch

from pluralign.data.synthetic import PopulationConfig, make_population
from pluralign.strength import Gamma, LogNormal

STEPS = (0, 100, 300, 1000)


def trajectory(margins: np.ndarray, family: str, parameterization: str, lr: float,
               strength_lr: float) -> list[float]:
    """CV² of the learned strength at :data:`STEPS`."""
    target = torch.as_tensor(margins, dtype=torch.float64)
    scale = torch.nn.Parameter(torch.tensor(1e-3, dtype=torch.float64))
    dist = (Gamma(parameterization=parameterization) if family == "gamma"
            else LogNormal(parameterization=parameterization, num_points=32))
    opt = torch.optim.Adam([{"params": [scale], "lr": lr},
                            {"params": list(dist.parameters()), "lr": strength_lr}])
    out = []
    for step in range(STEPS[-1] + 1):
        if step in STEPS:
            with torch.no_grad():
                out.append(float(dist.variance() / dist.mean() ** 2))
        opt.zero_grad()
        (-dist.log_expected_sigmoid(scale * target).mean()).backward()
        opt.step()
    return out


def main() -> None:
    torch.set_num_threads(1)
    base = PopulationConfig(n_annotators=2000, pairs_per_annotator=1, strength="gamma",
                            shape=2.0, rate=2.0, seed=0)
    pops = {"heterogeneous": base, "homogeneous": base.homogeneous_control()}
    margins = {k: np.asarray(make_population(c).dataset["true_margin"]) for k, c in pops.items()}
    print("| family | parameterization | strength lr | population | "
          + " | ".join(f"CV² @ {s}" for s in STEPS) + " |")
    print("|---|---|---|---|" + "---|" * len(STEPS))
    for family in ("gamma", "lognormal"):
        for parameterization, strength_lr in (("softplus", 1e-4), ("softplus", 1e-2),
                                              ("mean_cv2", 1e-2)):
            for name, m in margins.items():
                cv2 = trajectory(m, family, parameterization, lr=1e-2, strength_lr=strength_lr)
                print(f"| {family} | {parameterization} | {strength_lr:g} | {name} | "
                      + " | ".join(f"{c:.3g}" for c in cv2) + " |", flush=True)


if __name__ == "__main__":
    main()
