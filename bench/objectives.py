"""Cost of one forward+backward pass of each preference loss on 64 margins, relative to DPO.

Every candidate computes ``loss = objective(margins).mean()`` and ``loss.backward()`` with fresh
margins that require grad (as in training) on one CPU thread. Strengths are learnable as in the
paper; the "fixed" rows show the kernel cost alone (no parameter transform or gradient).
Candidates run interleaved, round after round; the CPU time of this thread (not wall time,
which other processes inflate) is measured, each round's time is divided by DPO's time in the
same round, and the median of these ratios over rounds is reported (with the best round, the
least disturbed by a busy machine).

    python bench/objectives.py [--rounds 25] [--inner 100]

The DPO row is the honest baseline: ``DPOObjective`` computes ``-F.logsigmoid(beta * margin)``
with the same NaN/inf input check as the MixDPO kernels (one reduction and host sync per call, see
``pluralign.numerics._check_result``), so the ratios compare like with like.

The reference it is compared with is the paper's Gamma evaluation ([MixDPO, App. C.1]): the
alternating series truncated at n = 1000 terms, differentiated by autograd. It lives only here.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from machine import machine
from torch import Tensor, nn

from pluralign.objectives import DPOObjective, MixDPOObjective
from pluralign.strength import Gamma, LogNormal


class NaiveSeriesGamma(nn.Module):
    """MixDPO-Gamma as in the paper: ``1 + Σ_{n=1}^{1000} (−1)^n (λ/(λ + nΔ))^k`` for Δ > 0 and
    ``Σ_{n=1}^{1000} (−1)^{n+1} (λ/(λ + n|Δ|))^k`` for Δ < 0 (Eq. 13–16), k and λ learnable."""

    def __init__(self, shape: float = 2.0, rate: float = 16.7, terms: int = 1000) -> None:
        super().__init__()
        inv = lambda v: v + torch.log(-torch.expm1(-torch.tensor(v)))  # noqa: E731
        self.raw_shape = nn.Parameter(inv(shape).float())
        self.raw_rate = nn.Parameter(inv(rate).float())
        n = torch.arange(1, terms + 1, dtype=torch.float32)
        self.register_buffer("n", n)
        self.register_buffer("sign", (-1.0) ** (n + 1))

    def forward(self, margin: Tensor) -> Tensor:
        k, lam = F.softplus(self.raw_shape), F.softplus(self.raw_rate)
        terms = (lam / (lam + margin.abs().unsqueeze(-1) * self.n)) ** k
        s = (self.sign * terms).sum(-1)
        value = torch.where(margin > 0, 1 - s, s)
        return -torch.log(value.clamp_min(1e-30))


def _candidates() -> dict[str, Callable[[Tensor], Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return {
        "DPO (beta=0.1)": DPOObjective(0.1),
        "MixDPO-Gamma (exact, CVZ 20 terms)": MixDPOObjective(Gamma(2.0, 16.7)),
        "  same, fixed k and lambda": MixDPOObjective(Gamma(2.0, 16.7, learnable=False)),
        "MixDPO-LogNormal (quadrature 16)": MixDPOObjective(LogNormal(-2.3, 0.6)),
        "  same, fixed mu and sigma": MixDPOObjective(LogNormal(-2.3, 0.6, learnable=False)),
        "MixDPO-LogNormal (Monte Carlo 16)": MixDPOObjective(
            LogNormal(-2.3, 0.6, method="monte_carlo", generator=gen)
        ),
        "naive 1000-term series (paper)": NaiveSeriesGamma(2.0, 16.7),
    }


def _step(objective: Callable[[Tensor], Tensor], margins: Tensor) -> None:
    margin = margins.clone().requires_grad_(True)
    objective(margin).mean().backward()


def main(argv: list[str] | None = None) -> int:
    print(f"machine: {machine()}", flush=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--inner", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    margins = torch.randn(args.batch, generator=torch.Generator().manual_seed(0)) * 2.0
    candidates = _candidates()
    for objective in candidates.values():  # warm-up (lazy buffers, allocator)
        for _ in range(20):
            _step(objective, margins)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(args.rounds):
        for name, objective in candidates.items():
            start = time.thread_time()
            for _ in range(args.inner):
                _step(objective, margins)
            times[name].append((time.thread_time() - start) / args.inner)

    base = times["DPO (beta=0.1)"]
    print(f"fwd+bwd on {args.batch} margins, 1 thread, {args.rounds} rounds x {args.inner} "
          f"steps (torch {torch.__version__}); ratios per round, then median and best round")
    print(f"{'objective':40s} {'us/step':>10s} {'x DPO':>8s} {'best':>6s}")
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base, strict=True)]
        print(f"{name:40s} {statistics.median(ts) * 1e6:10.1f} "
              f"{statistics.median(ratios):8.2f} {min(ratios):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
