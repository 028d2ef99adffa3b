"""Timing of the DAHP proximity experiment ([DAHP, §7.2]): data generation plus all methods.

Prints, for the paper's configuration, the seconds spent generating each dataset and fitting
each method, the total, and two side-by-side ratios measured in this run:

* vectorised sampling vs a per-sample Python loop (the reference implementation's style; the
  loop is timed on a slice and scaled linearly to the full size);
* one loss+gradient evaluation on cell-aggregated data vs on the raw per-sample tensors.

Run: ``.venv/bin/python bench/dahp_env.py [--policy mlp]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from machine import machine

LOOP_SLICE = 20_000


def loop_sampling(env, num: int, rng: np.random.Generator) -> float:
    """Seconds for the per-sample loop that the reference implementation uses."""
    start = time.perf_counter()
    for _ in range(num):
        x, a, b = rng.integers(40), rng.integers(40), rng.integers(40)
        u = rng.choice(env.num_types, p=env.type_probs)
        p = 1.0 / (1.0 + np.exp(-(env.rewards[u, x, a] - env.rewards[u, x, b])))
        _ = (a, b) if rng.random() < p else (b, a)
    return time.perf_counter() - start


def main() -> None:
    print(f"machine: {machine()}", flush=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="tabular", choices=("tabular", "mlp"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])    # one-time torch.optim imports
    from pluralign.envs import ProximityEnv
    from pluralign.experiments.dahp import (
        ExperimentConfig,
        aggregate,
        all_margins,
        fit_methods,
    )
    from pluralign.objectives import dpo_loss
    print(f"imports and torch.optim warm-up: {time.perf_counter() - start:.2f}s (once per process)")

    env = ProximityEnv()
    config = ExperimentConfig(policy=args.policy)
    result = fit_methods(env, config)
    for name, seconds in result.timings.items():
        print(f"{name:>24}: {seconds:6.2f}s")
    total = sum(result.timings.values())
    print(f"{'total (data + methods)':>24}: {total:6.2f}s   [reference implementation: ~600s]")
    for name, row in result.metrics.items():
        if name != "reference":
            print(f"{name:>24}: TV to pi* {row['tv_to_optimal']:.4f}, peak at "
                  f"{row['peak_offset']:+d}, Spearman vs NBC {row['spearman_nbc']:.3f}")

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    pairs = env.sample_pairs(config.num_pairs, rng)
    vectorised = time.perf_counter() - start
    looped = loop_sampling(env, LOOP_SLICE, rng) * config.num_pairs / LOOP_SLICE
    print(f"sampling {config.num_pairs} pairs: vectorised {vectorised:.3f}s, per-sample loop "
          f"~{looped:.1f}s (x{looped / vectorised:.0f})")

    logits = torch.zeros(40, 40, dtype=torch.float64, requires_grad=True)
    cells = aggregate(pairs.state, pairs.chosen, pairs.rejected, 40, 40)
    idx = [torch.as_tensor(v) for v in (pairs.state, pairs.chosen, pairs.rejected)]

    def timed(fn, repeats: int = 5) -> float:
        begin = time.perf_counter()
        for _ in range(repeats):
            fn().backward()
        return (time.perf_counter() - begin) / repeats

    def per_sample() -> torch.Tensor:
        logp = torch.log_softmax(logits, -1)
        return dpo_loss(logp[idx[0], idx[1]] - logp[idx[0], idx[2]], 1.0).mean()

    def per_cell() -> torch.Tensor:
        margins = all_margins(torch.log_softmax(logits, -1))
        return (cells.weight * dpo_loss(margins, 1.0)).sum() / cells.weight.sum()

    raw, agg = timed(per_sample), timed(per_cell)
    print(f"one DPO loss+gradient: per-sample {raw * 1e3:.1f}ms, cell-aggregated "
          f"{agg * 1e3:.1f}ms (x{raw / agg:.1f})")


if __name__ == "__main__":
    main()
