"""CLI commands of the evaluation layer: ``demo``, ``evaluate``, ``diagnose`` and ``report``.

Each exposes ``add_<name>_arguments(parser)`` and ``run_<name>(args) -> int`` for the dispatcher in
:mod:`pluralign.cli`. Heavy imports happen inside ``run_*`` so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pluralign.evaluation.errors import EvaluationError

DEFAULT_DEMO_CONFIG = "configs/demo.yaml"


# ------------------------------------------------------------------------------------ demo
def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = """Examples:
  pluralign demo                                  # configs/demo.yaml, writes runs/demo/
  pluralign demo --output-dir /tmp/demo --seed 1
  pluralign demo --config my_demo.yaml --no-progress

Writes report.html, PNG figures and metrics.json (micro/macro margins with CIs per method and
learned_beta_variance = final Var[beta] of Gamma MixDPO on each population)."""
    parser.add_argument("--config", default=DEFAULT_DEMO_CONFIG,
                        help="demo YAML (default: %(default)s; built-in defaults if missing)")
    parser.add_argument("--output-dir", default=None, help="run folder (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from pluralign.evaluation.demo import DemoConfig
    from pluralign.evaluation.demo import run_demo as _run

    overrides = {"output_dir": args.output_dir, "seed": args.seed}
    if args.no_progress:
        overrides["progress"] = False
    if Path(args.config).is_file():
        cfg = DemoConfig.from_yaml(args.config, **overrides)
    elif args.config != DEFAULT_DEMO_CONFIG:
        raise EvaluationError(f"demo config {args.config} not found")
    else:
        cfg = DemoConfig(**{k: v for k, v in overrides.items() if v is not None})
    metrics = _run(cfg)
    console = Console()
    table = Table(title="Held-out preference margins, heterogeneous population (95% CI)")
    for col in ("method", "micro", "macro", "final Var[β] het / hom"):
        table.add_column(col)
    for name, m in metrics["methods"].items():
        var = [metrics["final_strength"][p][name].get("beta_var") for p in
               ("heterogeneous", "homogeneous")]
        table.add_row(name, _est(m["micro"]), _est(m["macro"]),
                      " / ".join(f"{v:.3g}" for v in var))
    console.print(table)
    for line in metrics["summary"]:
        console.print(f"• {line}")
    console.print(f"Report: {Path(cfg.output_dir) / 'report.html'}")
    return 0


def _est(e: dict[str, Any]) -> str:
    return f"{e['mean']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}]"


# ------------------------------------------------------------------------------------ evaluate
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = """Examples:
  pluralign evaluate --model runs/mix/final --ref-model runs/sft/final --data pairs.jsonl \\
      --by attr.education attr.age --output-dir runs/eval
  pluralign evaluate --model runs/mix/final --ref-model runs/sft/final --data prism/ \\
      --format prism --baseline-margins runs/eval_dpo/margins.csv --output-dir runs/eval_mix
  pluralign evaluate --model runs/mix/final --ref-model runs/sft/final --data pairs.jsonl \\
      --judge-model path/to/reward-classifier --n-prompts 200 --output-dir runs/eval

Win rates (policy vs --ref-model generations): --judge-model is a local sequence-classification
checkpoint, --judge-bt a pluralign Bradley-Terry reward model; --judge-url/--judge-name use an
OpenAI-compatible endpoint (opt-in) with the key from the env var named by --judge-key-env."""
    parser.add_argument("--model", required=True, help="local folder of the policy")
    parser.add_argument("--ref-model", default=None, help="reference (SFT) model folder")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --model)")
    parser.add_argument("--data", required=True, help="preference data (file, folder or HF name)")
    parser.add_argument("--format", default=None, help="loader format (see pluralign data)")
    parser.add_argument("--by", nargs="*", default=[], help="subgroup columns (attr.* / ctx.*)")
    parser.add_argument("--baseline-margins", default=None,
                        help="margins.csv of a baseline run, for per-subgroup margin gains")
    parser.add_argument("--judge-model", default=None,
                        help="local sequence-classification reward model folder (judge)")
    parser.add_argument("--judge-bt", default=None,
                        help="folder of a pluralign Bradley-Terry reward model (MiniLM) as judge")
    parser.add_argument("--judge-url", default=None, help="OpenAI-compatible base URL (opt-in)")
    parser.add_argument("--judge-name", default=None, help="model name at --judge-url")
    parser.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                        help="env var holding the judge API key (never logged)")
    parser.add_argument("--n-prompts", type=int, default=200, help="prompts for win rates")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-prompt-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", required=True)


def run_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from pluralign.data import load_preferences
    from pluralign.evaluation.plots import plot_margin_gains, plot_subgroup_margins
    from pluralign.evaluation.report import write_report
    from pluralign.evaluation.subgroups import margin_gains, subgroup_table
    from pluralign.io import atomic_path
    from pluralign.training import load_causal_lm, load_tokenizer

    out = Path(args.output_dir)
    dataset = load_preferences(args.data, format=args.format)
    model = load_causal_lm(args.model)
    ref = load_causal_lm(args.ref_model) if args.ref_model else None
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    from pluralign.evaluation.margins import preference_margins

    df = preference_margins(model, ref, dataset, tokenizer, batch_size=args.batch_size,
                            max_length=args.max_length, max_prompt_length=args.max_prompt_length)
    with atomic_path(out / "margins.csv") as tmp:
        df.to_csv(tmp, index=False)
    metrics: dict[str, Any] = {"title": f"pluralign evaluate: {args.model}", "figures": [],
                               "failed_items": [], "notes": []}
    if args.by:
        table = subgroup_table(df, args.by, n_boot=args.n_boot, seed=args.seed)
        metrics["methods"] = {"policy": {"micro": table.micro.to_dict(),
                                         "macro": table.macro.to_dict()}}
        metrics["subgroup_table"] = table.to_dict()
        metrics["failed_items"] += [{"row": r, "error": "NaN/inf margin"}
                                    for r in table.excluded_rows]
        metrics["notes"] += table.notes
        plot_subgroup_margins(table, out / "fig2_subgroup_margins.png")
        metrics["figures"].append({"file": "fig2_subgroup_margins.png",
                                   "caption": "Subgroup mean margins with micro/macro lines"})
        if args.baseline_margins:
            base = pd.read_csv(args.baseline_margins)
            gains = margin_gains(df, base, args.by, n_boot=args.n_boot, seed=args.seed)
            metrics["differences"] = {"policy − baseline (macro)": gains.macro.to_dict(),
                                      "policy − baseline (micro)": gains.micro.to_dict()}
            plot_margin_gains({"policy": gains}, out / "fig3_margin_gains.png", "baseline")
            metrics["figures"].append({"file": "fig3_margin_gains.png",
                                       "caption": "Margin gains over the baseline"})
    else:
        metrics["methods"] = {"policy": {"micro": {"mean": float(df["margin"].mean())}}}
    if args.judge_model or args.judge_bt or args.judge_url:
        _win_rates(args, dataset, model, ref, tokenizer, metrics)
    write_report(out, metrics)
    print(f"wrote {out / 'report.html'}, {out / 'metrics.json'}, {out / 'margins.csv'}")
    return 0


def _win_rates(args: argparse.Namespace, dataset: Any, model: Any, ref: Any, tokenizer: Any,
               metrics: dict[str, Any]) -> None:
    import numpy as np

    from pluralign.evaluation.generation import generate_responses
    from pluralign.evaluation.judges import (
        HTTPJudge,
        RewardModelJudge,
        SequenceClassifierScorer,
        judge_pairs,
    )
    from pluralign.evaluation.winrate import win_rate_stats

    if ref is None:
        raise EvaluationError("win rates compare the policy with its SFT baseline: pass "
                              "--ref-model")
    if args.judge_url:
        if not args.judge_name:
            raise EvaluationError("--judge-url needs --judge-name (the judge model)")
        judge: Any = HTTPJudge(args.judge_url, args.judge_name, api_key_env=args.judge_key_env)
    elif args.judge_bt:
        from pluralign.reward.bradley_terry import BradleyTerryRewardModel

        judge = RewardModelJudge(BradleyTerryRewardModel.from_pretrained(args.judge_bt),
                                 name="bradley-terry")
    else:
        judge = RewardModelJudge(SequenceClassifierScorer(args.judge_model))
    prompts = list(dict.fromkeys(dataset["prompt"]))[: args.n_prompts]
    ours = generate_responses(model, tokenizer, prompts, seed=args.seed)
    base = generate_responses(ref, tokenizer, prompts, seed=args.seed)
    texts = [p if isinstance(p, str) else p[-1]["content"] for p in prompts]
    judged = judge_pairs(judge, texts, ours, base)
    ok = judged.ok
    lengths = np.array([len(a) - len(b) for a, b in zip(ours, base, strict=True)], dtype=float)
    metrics["win_rates"] = {"policy vs SFT": win_rate_stats(judged.outcomes[ok], lengths[ok],
                                                            seed=args.seed).to_dict()}
    metrics["failed_items"] += [{**f, "stage": "judge"} for f in judged.failed]


# ------------------------------------------------------------------------------------ diagnose
def add_diagnose_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = """Examples:
  pluralign diagnose --runs runs/mixdpo_gamma --output-dir runs/diag      # trajectory verdict
  pluralign diagnose --margins runs/eval/margins.csv --by attr.education --output-dir runs/diag
  pluralign diagnose --population data/synth --column true_margin --output-dir runs/diag
  pluralign diagnose --compare prism=a.csv hh=b.csv --family lognormal --output-dir runs/diag

Fits the preference-strength distribution by maximum likelihood on fixed margins (a binary mixed
logit), reports mean, variance and CV^2 with bootstrap CIs, posterior strengths per subgroup, and
collapse verdicts of MixDPO runs' logged beta variance."""
    parser.add_argument("--margins", default=None, help="CSV/parquet with one margin per pair")
    parser.add_argument("--population", default=None, help="saved synthetic population folder")
    parser.add_argument("--column", default=None,
                        help="margin column (default: margin; true_margin for --population)")
    parser.add_argument("--family", default="gamma", choices=("gamma", "lognormal"))
    parser.add_argument("--by", nargs="*", default=[], help="subgroup columns for profiles")
    parser.add_argument("--cluster", default=None, help="resampling unit, e.g. annotator_id")
    parser.add_argument("--runs", nargs="*", default=[], help="MixDPO run folders")
    parser.add_argument("--compare", nargs="*", default=[], metavar="NAME=FILE",
                        help="compare heterogeneity of several margin files")
    parser.add_argument("--n-boot", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", required=True)


def _read_table(path: str) -> Any:
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise EvaluationError(f"{path}: no such file")
    return pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)


def run_diagnose(args: argparse.Namespace) -> int:
    import numpy as np

    from pluralign.evaluation.diagnose import compare_heterogeneity, diagnose
    from pluralign.evaluation.plots import plot_variance_trajectories
    from pluralign.evaluation.report import write_report

    out = Path(args.output_dir)
    column = args.column or ("true_margin" if args.population else "margin")
    df = None
    if args.population:
        from pluralign.data import to_pandas
        from pluralign.data.synthetic import load_population

        df = to_pandas(load_population(args.population).dataset)
    elif args.margins:
        df = _read_table(args.margins)
    runs = {Path(r).name or r: r for r in args.runs}
    metrics: dict[str, Any] = {"title": "pluralign diagnose", "figures": [], "diagnostics": {}}
    if df is not None or runs:
        d = diagnose(df, margin=column, family=args.family, by=args.by, runs=runs,
                     cluster=args.cluster, n_boot=args.n_boot, seed=args.seed)
        metrics["summary"] = d.summary
        metrics["diagnosis"] = d.to_dict()
        metrics["diagnostics"].update({k: v.explanation for k, v in d.trajectories.items()})
        if d.trajectories:
            plot_variance_trajectories(d.trajectories, out / "fig4_beta_variance.png")
            metrics["figures"].append({"file": "fig4_beta_variance.png",
                                       "caption": "Learned Var[beta] during training"})
    if args.compare:
        pairs = [c.split("=", 1) for c in args.compare]
        if any(len(p) != 2 for p in pairs):
            raise EvaluationError("--compare takes NAME=FILE entries")
        cmp = compare_heterogeneity({n: np.asarray(_read_table(f)[column], dtype=float)
                                     for n, f in pairs}, args.family, n_boot=args.n_boot,
                                    seed=args.seed)
        metrics["comparison"] = cmp.to_dict()
        metrics["diagnostics"]["ranking by Var[β]"] = " > ".join(cmp.ranking)
    if len(metrics) == 3 and not metrics["diagnostics"]:
        raise EvaluationError("nothing to diagnose: pass --margins, --population, --runs or "
                              "--compare")
    path = write_report(out, metrics)
    for line in metrics.get("summary", []) + [f"{k}: {v}" for k, v in
                                               metrics["diagnostics"].items()]:
        print(line)
    print(f"wrote {path}")
    return 0


# ------------------------------------------------------------------------------------ report
def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = """Examples:
  pluralign report runs/demo          # rebuild runs/demo/report.html from metrics.json + PNGs"""
    parser.add_argument("run_dir", help="run folder holding metrics.json")


def run_report(args: argparse.Namespace) -> int:
    from pluralign.evaluation.report import build_report

    print(f"wrote {build_report(args.run_dir)}")
    return 0
