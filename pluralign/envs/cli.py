"""``pluralign simulate``: the DAHP proximity-environment experiment (seeds/003 §7.2)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pluralign.envs.experiment import METHODS, ExperimentConfig, run_experiment
from pluralign.envs.plots import plot_policies
from pluralign.envs.proximity import ProximityConfig, ProximityEnv
from pluralign.errors import ConfigError
from pluralign.evaluation.report import write_report
from pluralign.io import atomic_path, read_yaml_mapping, write_text

EPILOG = """\
Examples:
  pluralign simulate --config configs/dahp_env.yaml --out runs/dahp_env
  pluralign simulate --out runs/dahp_mlp --policy mlp --seed 1
  pluralign simulate --out runs/quick --methods dpo agreement --num-pairs 100000

The run folder gets config.yaml, metrics.json (TV to the optimal policy, peak offset and
Spearman correlations per method, plus timings), policies.csv (each policy against the offset
delta = response - prompt, averaged over states), policies.png (Fig. 4 of seeds/003) and
report.html (all of it on one page; `pluralign report RUN` rebuilds it).
"""


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``pluralign simulate``."""
    parser.epilog = EPILOG
    parser.add_argument("--config", type=Path, help="YAML with 'environment' and 'experiment' "
                        "sections (see configs/dahp_env.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    parser.add_argument("--seed", type=int, help="override experiment.seed")
    parser.add_argument("--policy", choices=("tabular", "mlp"), help="override experiment.policy")
    parser.add_argument("--methods", nargs="+", choices=METHODS, help="override which to run")
    parser.add_argument("--num-pairs", type=int, help="override experiment.num_pairs")


def _section(raw: dict[str, Any], name: str, cls: type, source: str) -> Any:
    values = raw.get(name) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: section {name!r} must be a mapping")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} in {name!r}; valid keys: "
                          f"{sorted(known)}")
    return cls(**values)


def load_simulation_config(path: Path | None) -> tuple[ProximityConfig, ExperimentConfig]:
    """Read the two config sections from YAML (``parse_yaml``, safe); defaults when ``None``."""
    if path is None:
        return ProximityConfig(), ExperimentConfig()
    raw = read_yaml_mapping(path, "the sections 'environment' and 'experiment'")
    if set(raw) - {"environment", "experiment"}:
        raise ConfigError(f"{path}: expected only the sections 'environment' and 'experiment'")
    return (_section(raw, "environment", ProximityConfig, str(path)),
            _section(raw, "experiment", ExperimentConfig, str(path)))


def run_simulate(args: argparse.Namespace) -> int:
    """Run the experiment and write the run folder."""
    env_cfg, exp_cfg = load_simulation_config(args.config)
    overrides = {"seed": args.seed, "policy": args.policy, "methods": args.methods,
                 "num_pairs": args.num_pairs}
    exp_cfg = dataclasses.replace(exp_cfg, **{k: v for k, v in overrides.items()
                                              if v is not None})
    env = ProximityEnv(env_cfg)
    result = run_experiment(env, exp_cfg)
    out = Path(args.out)
    config = {"environment": dataclasses.asdict(env_cfg),
              "experiment": dataclasses.asdict(exp_cfg)}
    write_text(out / "config.yaml", yaml.safe_dump(_plain(config), sort_keys=False))
    rolled = {name: env.roll(pol).mean(axis=0) for name, pol in result.policies.items()}
    rolled |= {"optimal": env.roll(env.optimal_policy()).mean(axis=0),
               "dpo_limit": env.roll(env.dpo_limit_policy()).mean(axis=0),
               "nbc": env.roll(env.nbc()).mean(axis=0)}
    with atomic_path(out / "policies.csv") as tmp:
        pd.DataFrame({"delta": env.offsets(), **rolled}).to_csv(tmp, index=False)
    plot_policies(env, result.policies, out / "policies.png")
    write_report(out, simulate_metrics(result.metrics, result.timings, exp_cfg))
    for name, row in result.metrics.items():
        if name != "reference":
            print(f"{name:>18}: TV to pi* {row['tv_to_optimal']:.4f}  peak at delta="
                  f"{row['peak_offset']:+d}  Spearman vs NBC {row['spearman_nbc']:.3f}")
    print(f"total {sum(result.timings.values()):.1f}s; wrote {out}")
    return 0


def simulate_metrics(per_method: dict[str, Any], timings: dict[str, float],
                     config: ExperimentConfig) -> dict[str, Any]:
    """``metrics.json`` of a run: per-method metrics at the top level (as returned by
    :func:`run_experiment`), ``timings_s``, and the title, summary, table and figure of the
    report."""
    columns = ["policy", "TV to π*", "TV to π* (per state)", "peak δ", "Spearman vs NBC",
               "Spearman vs π*"]
    keys = ("tv_to_optimal", "tv_to_optimal_per_state", "peak_offset", "spearman_nbc",
            "spearman_optimal")
    named = {**{k: v for k, v in per_method.items() if k != "reference"},
             **{f"{k} (exact)": v for k, v in per_method.get("reference", {}).items()}}
    summary = [f"{config.policy} policies, seed {config.seed}: {config.num_pairs:,} single-label "
               f"pairs, {config.num_paired:,} paired annotators, {config.num_full:,} "
               "all-types items."]
    summary += [f"{name}: TV to π* {row['tv_to_optimal']:.4f}, peak at δ = "
                f"{row['peak_offset']:+d}, Spearman vs NBC {row['spearman_nbc']:.3f}, vs π* "
                f"{row['spearman_optimal']:.3f}" for name, row in named.items()]
    summary.append(f"Total time {sum(timings.values()):.1f} s (data generation included).")
    return {
        **per_method,
        "timings_s": timings,
        "title": "pluralign simulate: DAHP proximity environment (seeds/003 §7.2)",
        "summary": summary,
        "tables": [
            {"title": "Policies vs the optimum π* and NBC",
             "columns": columns, "rows": [[name, *(row[k] for k in keys)]
                                          for name, row in named.items()]},
            {"title": "Wall-clock seconds", "columns": ["step", "seconds"],
             "rows": [[k, v] for k, v in timings.items()]},
        ],
        "figures": [{"file": "policies.png", "caption": "Learned policies against the offset "
                     "δ = response − prompt, averaged over states, with the optimum π*, DPO's "
                     "infinite-data limit and NBC (seeds/003 Fig. 4)"}],
        "notes": ["'(exact)' rows are closed-form references: dpo_limit is DPO's infinite-data "
                  "optimum (ranks like NBC), optimal is π* ∝ π_ref·exp(E_u r_u / β)."],
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
