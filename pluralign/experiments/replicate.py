"""The demo's claim under test, replicated over seeds (``pluralign experiment replicate``).

[VARIANCE-CLAIM]: the learned preference-strength distribution of MixDPO-Gamma ends
with a larger CV² (and Var[β]) on the heterogeneous population than on its homogeneous control.
One demo run cannot decide it; this experiment runs the demo
(:func:`pluralign.experiments.demo.train_and_compare`, unchanged) once per seed — each seed a
complete demo run folder ``seed-<s>/`` — and judges the claim from the paired interval over
seeds of ``log CV²_het − log CV²_hom``
(:func:`pluralign.evaluation.replication.paired_seed_interval`: Student-t, verdict supported /
not supported / unresolved). ``log Var_het − log Var_hom`` gets the same interval, reported
alongside. ``methods`` names further learned-strength methods of the demo to judge the same way,
each with its own interval and verdict (e.g. panel MixDPO, ``strength_unit: annotator``, beside
the per-pair MixDPO-Gamma: configs/replicate_panel_tiny.yaml).

Seeds are run by :func:`pluralign.experiments.seeds.run_seeds`: a seed whose folder already holds
the ``metrics.json`` of the same demo configuration is reused, not retrained, so a run can be
split over several invocations (``seeds=[0]``, then ``seeds=[0,1]``, ...), and one finished with
another configuration is refused; each seed's folder is complete as soon as that seed finishes,
and the summary (``metrics.json``, ``seeds.csv``, ``report.html``) is rewritten after every seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pluralign.config import config_from_dict, config_values, read_config
from pluralign.errors import ConfigError
from pluralign.evaluation.replication import SeedInterval, paired_seed_interval
from pluralign.experiments.base import print_summary
from pluralign.experiments.demo import GAMMA_METHOD, DemoConfig, train_and_compare
from pluralign.experiments.seeds import check_resume, check_seed_list, run_seeds, seed_folder
from pluralign.runs import RunFolderOptions, write_config, write_report, write_table
from pluralign.validation import OPEN_UNIT, check_fields

HET, HOM = "heterogeneous", "homogeneous"
DEFAULT_DEMO_CONFIG = "configs/demo.yaml"


@dataclass
class ReplicateConfig(RunFolderOptions):
    """Which demo to replicate and over which seeds.

    Attributes:
        output_dir: run folder: the summary, plus one demo run folder ``seed-<s>/`` per seed.
        demo_config: YAML file of the demo configuration (``DemoConfig`` fields), e.g.
            configs/demo.yaml or configs/demo_smollm2.yaml.
        demo: ``key=value`` overrides of that file, as on the command line (dotted keys, YAML
            values; e.g. ``["generations=0", "data.population.n_annotators=40"]``); seed,
            output_dir and progress are set per seed.
        seeds: seeds to run (each seeds the populations, split, models and bootstraps).
        level: confidence level of the paired interval over seeds.
        progress: show the demo runs' progress bars.
        resume: continue the replication in output_dir: seeds whose demo folder the same
            configuration finished are reused, the others run (without it a non-empty
            output_dir is refused unless overwrite=true).
        methods: the demo's learned-strength methods whose CV² is compared (the first is
            judged by ``verdict``; each gets its own interval in ``by_method``).
    """

    output_dir: str = "runs/replicate"
    demo_config: str = DEFAULT_DEMO_CONFIG
    demo: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    level: float = 0.95
    progress: bool = True
    resume: bool = False
    methods: list[str] = field(default_factory=lambda: [GAMMA_METHOD])

    def __post_init__(self) -> None:
        super().__post_init__()
        check_resume(self)
        check_fields(self, {"level": OPEN_UNIT})
        if not isinstance(self.methods, list) or not self.methods or any(
                not isinstance(m, str) for m in self.methods) or GAMMA_METHOD not in self.methods:
            raise ConfigError(f"ReplicateConfig.methods={self.methods!r} is invalid; use a list "
                              f"of the demo's method names that includes {GAMMA_METHOD!r}")
        check_seed_list(self.seeds, "ReplicateConfig")
        if not isinstance(self.demo, list) or not all(
                isinstance(o, str) and "=" in o for o in self.demo):
            raise ConfigError(f"ReplicateConfig.demo={self.demo!r} is invalid; use a list of "
                              "key=value overrides, e.g. [generations=0]")
        for item in self.demo:
            if item.partition("=")[0] in ("seed", "output_dir", "progress"):
                raise ConfigError(f"ReplicateConfig.demo: {item!r} is set per seed; remove it")
        demo = self.seed_config(self.seeds[0])  # a bad demo config fails before any training
        missing = [m for m in self.methods if m not in demo.methods]
        if missing:
            raise ConfigError(f"ReplicateConfig.methods: {missing} are not methods of the demo "
                              f"configuration (it has {sorted(demo.methods)})")

    def seed_config(self, seed: int) -> DemoConfig:
        """The demo configuration of one seed."""
        path: str | None = self.demo_config
        if path == DEFAULT_DEMO_CONFIG and not Path(path).is_file():
            path = None  # as for `pluralign demo`: the shipped file's values are the defaults
        values = {**read_config(DemoConfig, path, self.demo),
                  "seed": seed, "output_dir": str(seed_folder(self.output_dir, seed)),
                  "progress": self.progress}
        return config_from_dict(DemoConfig, values, path or "DemoConfig")


def _seed_row(seed: int, metrics: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    """The seed's learned strengths; columns of a method other than MixDPO-Gamma end in
    ``[<method>]``."""
    row: dict[str, Any] = {"seed": seed}
    for method in methods:
        final = {k: metrics["final_strength"][k][method] for k in (HET, HOM)}
        mean = {k: final[k]["beta_mean"] for k in (HET, HOM)}
        var = {k: final[k]["beta_var"] for k in (HET, HOM)}
        cv2 = (metrics["learned_beta_cv2"] if method == GAMMA_METHOD else
               {k: var[k] / mean[k] ** 2 if mean[k] else None for k in (HET, HOM)})
        tag = "" if method == GAMMA_METHOD else f"[{method}]"
        for k in (HET, HOM):
            row.update({f"mean_{k[:3]}{tag}": mean[k], f"var_{k[:3]}{tag}": var[k],
                        f"cv2_{k[:3]}{tag}": cv2[k]})
        row[f"log_cv2_diff{tag}"] = _log_ratio(cv2[HET], cv2[HOM])
        row[f"log_var_diff{tag}"] = _log_ratio(var[HET], var[HOM])
    row["runtime_seconds"] = metrics["runtime_seconds"]
    return row


def _log_ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or not a > 0 or not b > 0:
        return math.nan
    return math.log(a) - math.log(b)


def run_replication(cfg: ReplicateConfig) -> dict[str, Any]:
    """Run (or reuse) every seed's demo, then write and return the summary metrics."""
    out = Path(cfg.output_dir)
    write_config(out, config_values(cfg))

    def summarise(done: dict[int, dict[str, Any]]) -> None:
        rows = pd.DataFrame([_seed_row(seed, m, cfg.methods) for seed, m in done.items()])
        write_table(out, "seeds.csv", rows)
        write_report(out, _summarise(cfg, rows))

    done = run_seeds(cfg.seeds, cfg.seed_config, train_and_compare,
                     progress=cfg.progress, desc="replicate", after_seed=summarise)
    return _summarise(cfg, pd.DataFrame([_seed_row(seed, m, cfg.methods)
                                         for seed, m in done.items()]))


def _summarise(cfg: ReplicateConfig, seeds: pd.DataFrame) -> dict[str, Any]:
    done = seeds.dropna(subset=["log_cv2_diff"])
    cv2 = paired_seed_interval(done["log_cv2_diff"].tolist(), cfg.level) if len(done) else None
    var_done = seeds.dropna(subset=["log_var_diff"])
    var = (paired_seed_interval(var_done["log_var_diff"].tolist(), cfg.level)
           if len(var_done) else None)
    pct = f"{cfg.level:.0%}"
    if cv2 is None:
        claim = "no seed gave a positive learned CV² on both populations: unresolved."
    else:
        claim = (f"log CV²_het − log CV²_hom of {GAMMA_METHOD} over {cv2.n} seed(s): mean "
                 f"{cv2.mean:+.3g} (ratio ×{math.exp(cv2.mean):.3g}), {_interval(cv2, pct)} → "
                 f"the claim is {cv2.verdict.upper()}.")
    summary = [claim]
    if var is not None:
        summary.append(f"log Var_het − log Var_hom: mean {var.mean:+.3g}, "
                       f"{_interval(var, pct)} ({var.verdict}).")
    summary.append(f"Het larger in {int((seeds['log_cv2_diff'] > 0).sum())} of {len(seeds)} "
                   f"seed(s) (CV²); seeds with an undefined ratio: "
                   f"{int(seeds['log_cv2_diff'].isna().sum())}.")
    by_method = {}
    for method in cfg.methods[1:]:
        diffs = seeds[f"log_cv2_diff[{method}]"].dropna().tolist()
        other = paired_seed_interval(diffs, cfg.level) if diffs else None
        by_method[method] = {"log_cv2_difference": _json_safe(other.to_dict()) if other else None,
                             "verdict": other.verdict if other else "unresolved"}
        summary.append(
            f"{method}: no seed gave a positive learned CV² on both populations: unresolved."
            if other is None else
            f"{method}: log CV²_het − log CV²_hom over {other.n} seed(s): mean "
            f"{other.mean:+.3g} (ratio ×{math.exp(other.mean):.3g}), {_interval(other, pct)} → "
            f"{other.verdict.upper()}; het larger in {sum(d > 0 for d in diffs)} of "
            f"{len(diffs)}.")
    summary.append(f"Runtime {seeds['runtime_seconds'].sum():.0f} s of demo runs over "
                   f"{len(seeds)} seed(s) (reused seeds count their original runtime).")
    return {
        "title": "pluralign replicate: learned CV² heterogeneous vs homogeneous over seeds",
        "summary": summary,
        "verdict": cv2.verdict if cv2 else "unresolved",
        "log_cv2_difference": _json_safe(cv2.to_dict()) if cv2 else None,
        "log_var_difference": _json_safe(var.to_dict()) if var else None,
        "by_method": by_method,
        "seeds": [_json_safe(r) for r in seeds.to_dict(orient="records")],
        "config": config_values(cfg),
    }


def _interval(interval: SeedInterval, pct: str) -> str:
    if interval.n < 2:
        return "no interval from one seed"
    return (f"{pct} t-interval [{interval.ci_low:+.3g}, {interval.ci_high:+.3g}], t-test "
            f"p = {interval.p_value:.3g}")


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with NaN (an undefined interval or ratio) as None: JSON has no NaN."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def main(cfg: ReplicateConfig) -> dict[str, Any]:
    """Run the replication and print its per-seed table and verdict."""
    from rich.console import Console
    from rich.table import Table

    metrics = run_replication(cfg)
    console = Console()
    table = Table(title=f"{GAMMA_METHOD}: final learned strength per seed")
    cols = ["seed", "cv2_het", "cv2_hom", "log_cv2_diff", "var_het", "var_hom", "log_var_diff"]
    for col in cols:
        table.add_column(col)
    for row in metrics["seeds"]:
        table.add_row(*(str(row[c]) if c == "seed" or row[c] is None else f"{row[c]:.4g}"
                        for c in cols))
    console.print(table)
    print_summary(console, metrics, cfg.output_dir)
    return metrics
