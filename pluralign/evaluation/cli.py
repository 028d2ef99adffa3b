"""CLI commands of the evaluation layer: ``evaluate``, ``diagnose`` and ``report``; argument
parsing plus one call into :mod:`pluralign.evaluation.evaluate_run`,
:mod:`pluralign.evaluation.diagnose_run` or :mod:`pluralign.runs`."""

from __future__ import annotations

import argparse

from pluralign.config import add_config_arguments, config_from_args
from pluralign.runs import run_guarded


# ------------------------------------------------------------------------------------ evaluate
def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    from pluralign.evaluation.evaluate_run import EvaluateConfig

    add_config_arguments(parser, EvaluateConfig, """Examples:
  pluralign evaluate model=runs/mix model.ref_model=runs/sft data=pairs.jsonl \\
      "by=[attr.education, attr.age]" --output-dir runs/eval
  pluralign evaluate model=runs/mix model.ref_model=runs/sft data=prism/ data.format=prism \\
      baseline_margins=runs/eval_dpo/margins.csv --output-dir runs/eval_mix
  pluralign evaluate model=runs/tiny_cpu model.ref_model=runs/tiny_cpu_sft data=synthetic \\
      "data.population={n_annotators: 40, pairs_per_annotator: 16, n_prompts: 60, \\
      text_style: compact, strength: gamma}" data.test_size=0.2 --output-dir runs/eval_tiny
  pluralign evaluate model=runs/mix model.ref_model=runs/sft data=runs/pop \\
      judge_model=path/to/reward-classifier n_prompts=200 --output-dir runs/eval

model and data are the sections of a train recipe, with the same keys: with data.test_size > 0
only the held-out split is scored (the third example scores the pairs configs/tiny_cpu.yaml held
out); a saved synthetic population is data=FOLDER.
Win rates (policy vs model.ref_model generations): judge_model is a local sequence-classification
checkpoint, judge_bt a pluralign Bradley-Terry reward model; judge_url/judge_name use an
OpenAI-compatible endpoint (opt-in) with the key from the env var named by judge_key_env; a
user:password in judge_url is recorded in config.yaml as ***@.
baseline_margins (a margins.csv on the same pairs) adds the margin gain over that baseline: per
subgroup with by=, else the mean gain.
The composition matrix ([COMPOSITION]) is `pluralign experiment composition`.""")


def run_evaluate(args: argparse.Namespace) -> int:
    from pluralign.evaluation.evaluate_run import EvaluateConfig, run_evaluation

    run_guarded(config_from_args(EvaluateConfig, args)[0], run_evaluation)
    return 0


# ------------------------------------------------------------------------------------ diagnose
def add_diagnose_arguments(parser: argparse.ArgumentParser) -> None:
    from pluralign.evaluation.diagnose_run import DiagnoseConfig

    add_config_arguments(parser, DiagnoseConfig, """Examples:
  pluralign diagnose "runs=[runs/mixdpo_gamma]" --output-dir runs/diag     # trajectory verdict
  pluralign diagnose margins=runs/eval/margins.csv "by=[attr.education]" --output-dir runs/diag
  pluralign diagnose population=data/synth column=true_margin --output-dir runs/diag
  pluralign diagnose margins=runs/eval/margins.csv groups=annotator_id power=true \\
      --output-dir runs/diag_panel     # panel fit (one beta per annotator) + power at your fit
  pluralign diagnose compare.prism=a.csv compare.hh=b.csv family=lognormal --output-dir runs/diag
  pluralign diagnose "power_pairs=[1000, 4000]" power_cv2_a=0.75 power_cv2_b=0.5 \\
      power_pairs_per_annotator=20 --output-dir runs/power        # how much data is enough?

Fits the preference-strength distribution by maximum likelihood on fixed margins (a binary mixed
logit), reports mean, variance and CV^2 with bootstrap CIs, a verdict (collapsed /
heterogeneous / inconclusive / unidentified) with the fit's identification notes, with
groups=<annotator id column> the panel fit (one beta per annotator: identified even when the
margins come from a trained model, unlike the per-pair fit), a fit per
subgroup with an equality test (by=...), CV^2 verdicts of MixDPO runs' logged strength, and the
simulated power to separate two CV^2 (power_pairs=...).""")


def run_diagnose(args: argparse.Namespace) -> int:
    from pluralign.evaluation.diagnose_run import DiagnoseConfig, run_diagnosis

    run_guarded(config_from_args(DiagnoseConfig, args)[0], run_diagnosis)
    return 0


# ------------------------------------------------------------------------------------ report
def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    from pluralign.runs import ReportConfig

    add_config_arguments(parser, ReportConfig, """Examples:
  pluralign report --output-dir runs/demo    # rebuild runs/demo/report.html from metrics.json""")


def run_report(args: argparse.Namespace) -> int:
    from pluralign.runs import ReportConfig, build_report

    print(f"wrote {build_report(config_from_args(ReportConfig, args)[0].output_dir)}")
    return 0
