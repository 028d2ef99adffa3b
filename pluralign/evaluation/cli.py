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
    # soft_wrap: a path must stay copy-pasteable at any terminal width (rich wraps at 80 in CI).
    console.print(f"Report: {Path(cfg.output_dir) / 'report.html'}", soft_wrap=True,
                  markup=False, highlight=False)
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
  pluralign evaluate --composition gender --model runs/sft/final --population data/synth \\
      --train-option learning_rate=1.0e-3 --train-option num_train_epochs=2 --output-dir runs/comp
  pluralign evaluate --composition education --model runs/sft/final --data prism/ --format prism \\
      --train-config configs/prism_llama1b_dpo.yaml --n-per-group 500 --split annotator \\
      --output-dir runs/comp_education

Composition matrix (--composition ATTR, seeds/004): copies of --model (the SFT model, also the
reference) are DPO-trained, one per value of the annotator attribute ATTR, on size-matched
subsets of the training split; every model is then scored on every group's held-out pairs.
Training options come from the 'training:' section of --train-config (a `pluralign train`
recipe; its model/data sections are ignored) and --train-option KEY=VALUE (YAML values); the
models are not kept. Writes composition.csv (cells with CIs), composition_margin.csv,
composition_accuracy.csv, the heatmaps, metrics.json and report.html.

Win rates (policy vs --ref-model generations): --judge-model is a local sequence-classification
checkpoint, --judge-bt a pluralign Bradley-Terry reward model; --judge-url/--judge-name use an
OpenAI-compatible endpoint (opt-in) with the key from the env var named by --judge-key-env."""
    parser.add_argument("--model", required=True, help="local folder of the policy (with "
                        "--composition: the SFT model every group's copy starts from)")
    parser.add_argument("--ref-model", default=None, help="reference (SFT) model folder")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: --model)")
    parser.add_argument("--data", default=None, help="preference data (file, folder or HF name)")
    parser.add_argument("--population", default=None,
                        help="saved synthetic population folder (instead of --data)")
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
    comp = parser.add_argument_group("composition matrix (seeds/004)")
    comp.add_argument("--composition", default=None, metavar="ATTR",
                      help="annotator attribute whose groups each get their own model")
    comp.add_argument("--groups", nargs="*", default=None,
                      help="groups to compare (default: every value present)")
    comp.add_argument("--n-per-group", type=int, default=None,
                      help="training pairs per group (default: the smallest group's count)")
    comp.add_argument("--test-size", type=float, default=0.2, help="held-out fraction")
    comp.add_argument("--split", choices=("pairs", "annotator"), default="pairs",
                      help="hold out random pairs or whole annotators")
    comp.add_argument("--train-config", default=None,
                      help="`pluralign train` recipe whose training: section is used")
    comp.add_argument("--train-option", action="append", default=[], metavar="KEY=VALUE",
                      help="PreferenceConfig override, repeatable (e.g. learning_rate=1.0e-3)")


def _load_dataset(args: argparse.Namespace) -> Any:
    if (args.data is None) == (args.population is None):
        raise EvaluationError("pass exactly one of --data (preference data) and --population "
                              "(a saved synthetic population folder)")
    if args.population is not None:
        from pluralign.data.synthetic import load_population

        return load_population(args.population).dataset
    from pluralign.data import load_preferences

    return load_preferences(args.data, format=args.format)


def run_evaluate(args: argparse.Namespace) -> int:
    if args.composition:
        return _run_composition(args)
    import pandas as pd

    from pluralign.evaluation.plots import plot_margin_gains, plot_subgroup_margins
    from pluralign.evaluation.report import write_report
    from pluralign.evaluation.subgroups import margin_gains, subgroup_table
    from pluralign.io import atomic_path
    from pluralign.training import load_causal_lm, load_tokenizer

    out = Path(args.output_dir)
    dataset = _load_dataset(args)
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


def _composition_config(args: argparse.Namespace, output_dir: Path) -> Any:
    """PreferenceConfig from --train-config's training: section and --train-option overrides."""
    from pluralign.training import PreferenceConfig
    from pluralign.training.cli import apply_overrides, build_args, load_recipe

    bad = [o for o in args.train_option if "=" not in o]
    if bad:
        raise EvaluationError(f"--train-option {bad[0]!r} is not of the form KEY=VALUE")
    overrides = [f"--training.{o}" for o in args.train_option]
    recipe = (load_recipe(args.train_config, overrides) if args.train_config
              else apply_overrides({}, overrides))
    training = dict(recipe.get("training") or {})
    training.setdefault("max_length", args.max_length)
    training.setdefault("max_prompt_length", args.max_prompt_length)
    training.setdefault("seed", args.seed)
    # One model per group, scored in memory (output_dir is scratch): no checkpoints, no loggers.
    training |= {"output_dir": str(output_dir), "save_strategy": "no", "report_to": "none"}
    return build_args(PreferenceConfig, training)


def _run_composition(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from pluralign.data.splits import split_by_annotator, train_test_split_pairs
    from pluralign.evaluation.composition import composition_matrix, tiny_dpo_functions
    from pluralign.evaluation.plots import plot_composition
    from pluralign.evaluation.report import write_report
    from pluralign.io import atomic_path
    from pluralign.training import load_causal_lm, load_tokenizer

    ignored = [flag for flag, value in (("--ref-model", args.ref_model), ("--by", args.by),
                                        ("--baseline-margins", args.baseline_margins),
                                        ("--judge-model", args.judge_model),
                                        ("--judge-bt", args.judge_bt),
                                        ("--judge-url", args.judge_url)) if value]
    if ignored:
        raise EvaluationError(f"--composition does not use {', '.join(ignored)}: it fine-tunes "
                              "copies of --model and uses --model itself as the reference")
    out = Path(args.output_dir)
    attribute = args.composition.removeprefix("attr.")
    with tempfile.TemporaryDirectory(prefix="pluralign-composition-") as scratch:
        config = _composition_config(args, Path(scratch))
        dataset = _load_dataset(args)
        split = (split_by_annotator if args.split == "annotator" else train_test_split_pairs)(
            dataset, args.test_size, seed=args.seed)
        torch.manual_seed(args.seed)
        sft = load_causal_lm(args.model).eval()
        tokenizer = load_tokenizer(args.tokenizer or args.model)
        train_fn, score_fn = tiny_dpo_functions(sft, tokenizer, config,
                                                margin_kwargs={"batch_size": args.batch_size})
        result = composition_matrix(split["train"], split["test"], attribute, train_fn,
                                    score_fn, n=args.n_per_group, groups=args.groups,
                                    n_boot=args.n_boot, seed=args.seed)
    cells = result.to_frame()
    tables = {"composition.csv": cells, "composition_margin.csv": result.margin,
              "composition_accuracy.csv": result.accuracy}
    for name, frame in tables.items():
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=name != "composition.csv")
    plot_composition(result.margin, out / "composition_margin.png")
    plot_composition(result.accuracy, out / "composition_accuracy.png",
                     value="preference accuracy (%)")
    metrics: dict[str, Any] = {
        "title": f"pluralign evaluate: composition matrix by {attribute}",
        "summary": result.summary(),
        "composition": result.to_dict(),
        "own_group_advantage": result.own_group_advantage(),
        "tables": [{"title": "Held-out margin of the model trained on a group (rows) evaluated "
                             "on each group (columns), 95% bootstrap CI",
                    "columns": ["trained on ↓ / evaluated on →", *map(str, result.margin.columns)],
                    "rows": [[a, *(f"{result.margin.at[a, b]:+.4g} "
                                   f"[{result.margin_ci_low.at[a, b]:+.3g}, "
                                   f"{result.margin_ci_high.at[a, b]:+.3g}]"
                                   for b in result.margin.columns)]
                             for a in result.margin.index]}],
        "figures": [
            {"file": "composition_margin.png", "caption": "Mean held-out margin: trained on "
             "(rows) vs evaluated on (columns)"},
            {"file": "composition_accuracy.png", "caption": "Preference accuracy (% of held-out "
             "pairs with positive margin): trained on (rows) vs evaluated on (columns)"}],
        "notes": [f"Training: objective={config.objective}, learning_rate={config.learning_rate}, "
                  f"epochs={config.num_train_epochs}, batch={config.per_device_train_batch_size};"
                  f" split by {args.split} (test_size={args.test_size}), seed {args.seed}.",
                  "Margins are policy-minus-reference log-probability differences; the "
                  "reference is --model."],
    }
    write_report(out, metrics)
    for line in metrics["summary"]:
        print(line)
    print(f"wrote {out / 'report.html'}, {out / 'metrics.json'}, {out / 'composition.csv'}")
    return 0


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
