"""``pluralign evaluate``: held-out preference margins of a policy by subgroup, and judged win
rates; its config dataclass and the one function that writes the run folder (:mod:`pluralign.runs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pluralign.config import config_values
from pluralign.data.config import DataConfig
from pluralign.errors import ConfigError
from pluralign.evaluation.margins import ScoringConfig
from pluralign.runs import RunFolderOptions, read_table
from pluralign.training.recipe import ModelConfig
from pluralign.validation import COUNT, check_fields, check_names


def check_trained_model(model: ModelConfig | None, where: str, role: str) -> ModelConfig:
    """``model`` as a trained model to load (a folder or registered name; no tiny model built
    from scratch, no new adapters), else :class:`ConfigError` naming ``where``."""
    if model is None or model.name_or_path == "tiny":
        raise ConfigError(f"{where} needs model=FOLDER ({role}; a local model folder or a "
                          "registered name)")
    for name, value in (("lora", model.lora), ("config", model.config)):
        if value:
            raise ConfigError(f"{where}: model.{name} applies to training; {where} loads "
                              f"model.name_or_path as saved, remove model.{name}")
    return model


def check_data(data: DataConfig | None, where: str) -> DataConfig:
    """``data`` is set, else :class:`ConfigError` naming ``where`` and the spelling."""
    if data is None:
        raise ConfigError(f"{where} needs data=SOURCE (a file, folder, saved synthetic "
                          "population or Hub id; data.format=... if not detected)")
    return data


@dataclass
class EvaluateConfig(ScoringConfig, RunFolderOptions):
    """``pluralign evaluate``: held-out preference margins by subgroup, and win rates.

    Attributes:
        model: the policy, as in a train recipe (``model=DIR``; ``model.tokenizer`` when it is
            not in that folder); margins are log-ratios against ``model.ref_model`` (the SFT
            model), plain log-prob differences without one.
        data: the pairs, as in a train recipe (``data=FILE``, ``data.format``,
            ``data.options``; a saved synthetic population is ``data=FOLDER``). With
            ``data.test_size`` > 0 only its held-out split is scored (the one a train run with
            the same data section held out); else every pair.
        by: subgroup columns (``attr.*`` / ``ctx.*``).
        baseline_margins: margins.csv of a baseline run on the same pairs, for the margin gain
            over it (per subgroup with ``by``; else the mean gain). A missing, empty,
            margin-less or wrong-length file is refused.
        judge_model: local sequence-classification reward model folder (judge).
        judge_bt: folder of a pluralign Bradley-Terry reward model (MiniLM) as judge.
        judge_url: OpenAI-compatible base URL (opt-in).
        judge_name: model name at ``judge_url``.
        judge_key_env: env var holding the judge API key (never logged).
        n_prompts: prompts for win rates.
        seed: seed of the bootstrap and the generations.
        output_dir: run folder.
    """

    model: ModelConfig | None = None
    data: DataConfig | None = None
    by: list[str] = field(default_factory=list)
    baseline_margins: str | None = None
    judge_model: str | None = None
    judge_bt: str | None = None
    judge_url: str | None = None
    judge_name: str | None = None
    judge_key_env: str = "OPENAI_API_KEY"
    n_prompts: int = 200
    output_dir: str | None = None

    def __post_init__(self) -> None:
        check_trained_model(self.model, "evaluate", "the policy")
        check_data(self.data, "evaluate")
        if self.output_dir is None:
            raise ConfigError("evaluate needs --output-dir DIR")
        super().__post_init__()
        check_fields(self, {"n_prompts": COUNT})
        self.by = check_names(self.by, "EvaluateConfig.by")
        if self.judged and self.model.ref_model is None:
            raise ConfigError("win rates compare the policy with its SFT baseline: set "
                              "model.ref_model")
        if self.judge_url and not self.judge_name:
            raise ConfigError("judge_url needs judge_name (the judge model)")

    @property
    def judged(self) -> bool:
        """Whether win rates are asked for (a judge is set)."""
        return bool(self.judge_model or self.judge_bt or self.judge_url)


def run_evaluation(config: EvaluateConfig) -> dict[str, Any]:
    """Score ``config.model`` on the pairs, tabulate by subgroup, judge win rates if asked, and
    write the run folder (config.yaml, margins.csv, figures, metrics.json, report.html)."""

    import numpy as np
    import pandas as pd

    from pluralign.evaluation.plots import plot_margin_gains, plot_subgroup_margins
    from pluralign.evaluation.subgroups import margin_gains, subgroup_table
    from pluralign.runs import write_config, write_report, write_table
    from pluralign.training import load_causal_lm, load_tokenizer

    out = Path(config.output_dir)
    # read before the model loads, with or without by=: a bad baseline is never skipped
    base = (read_table(config.baseline_margins, required=("margin", *config.by))
            if config.baseline_margins else None)
    from pluralign.data.config import load_data

    train, test = load_data(config.data)
    dataset = train if test is None else test
    spec = config.model
    model = load_causal_lm(spec.name_or_path)
    ref = load_causal_lm(spec.ref_model) if spec.ref_model else None
    tokenizer = load_tokenizer(spec.tokenizer or spec.name_or_path)
    df = config.margins(model, ref, dataset, tokenizer)
    if base is not None and len(base) != len(df):
        raise ConfigError(f"baseline_margins={config.baseline_margins}: {len(base)} rows but "
                          f"this evaluation scores {len(df)} pairs; evaluate the baseline on "
                          "the same data (and data.test_size/data.seed)")
    values = config_values(config)
    if config.judge_url:
        from pluralign.evaluation.judges import redact_userinfo

        values["judge_url"] = redact_userinfo(config.judge_url)
    write_config(out, values)
    write_table(out, "margins.csv", df)
    metrics: dict[str, Any] = {"title": f"pluralign evaluate: {spec.name_or_path}", "figures": [],
                               "failed_items": [], "notes": []}
    if config.by:
        table = subgroup_table(df, config.by, n_boot=config.n_boot, seed=config.seed)
        metrics["methods"] = {"policy": {"micro": table.micro.to_dict(),
                                         "macro": table.macro.to_dict()}}
        metrics["subgroup_table"] = table.to_dict()
        metrics["failed_items"] += [{"row": r, "error": "NaN/inf margin"}
                                    for r in table.excluded_rows]
        metrics["notes"] += table.notes
        plot_subgroup_margins(table, out / "fig2_subgroup_margins.png")
        metrics["figures"].append({"file": "fig2_subgroup_margins.png",
                                   "caption": "Subgroup mean margins with micro/macro lines"})
        if base is not None:
            gains = margin_gains(df, base, config.by, n_boot=config.n_boot, seed=config.seed)
            metrics["differences"] = {"policy − baseline (macro)": gains.macro.to_dict(),
                                      "policy − baseline (micro)": gains.micro.to_dict()}
            plot_margin_gains({"policy": gains}, out / "fig3_margin_gains.png", "baseline")
            metrics["figures"].append({"file": "fig3_margin_gains.png",
                                       "caption": "Margin gains over the baseline"})
    else:
        metrics["methods"] = {"policy": {"micro": {"mean": float(df["margin"].mean())}}}
        if base is not None:
            gain = df["margin"].to_numpy(dtype=float) - pd.to_numeric(
                base["margin"], errors="coerce").to_numpy(dtype=float)
            metrics["differences"] = {"policy − baseline (micro)": {
                "mean": float(np.nanmean(gain)), "n": int(np.isfinite(gain).sum())}}
    if config.judged:
        _win_rates(config, dataset, model, ref, tokenizer, metrics)
    write_report(out, metrics)
    print(f"wrote {out / 'report.html'}, {out / 'metrics.json'}, {out / 'margins.csv'}")
    return metrics


def _win_rates(config: EvaluateConfig, dataset: Any, model: Any, ref: Any, tokenizer: Any,
               metrics: dict[str, Any]) -> None:
    from pluralign.evaluation.generation import (
        distinct_prompts,
        generate_responses,
        prompt_text,
    )
    from pluralign.evaluation.judges import (
        HTTPJudge,
        RewardModelJudge,
        SequenceClassifierScorer,
    )
    from pluralign.evaluation.winrate import judged_win_rate

    if config.judge_url:
        judge: Any = HTTPJudge(config.judge_url, config.judge_name,
                               api_key_env=config.judge_key_env)
    elif config.judge_bt:
        from pluralign.reward.bradley_terry import BradleyTerryRewardModel

        judge = RewardModelJudge(BradleyTerryRewardModel.from_pretrained(config.judge_bt),
                                 name="bradley-terry")
    else:
        judge = RewardModelJudge(SequenceClassifierScorer(config.judge_model))
    prompts = distinct_prompts(dataset["prompt"], config.n_prompts)
    ours = generate_responses(model, tokenizer, prompts, seed=config.seed)
    base = generate_responses(ref, tokenizer, prompts, seed=config.seed)
    texts = [prompt_text(p) for p in prompts]
    judged = judged_win_rate(judge, texts, ours, base, seed=config.seed)
    metrics["win_rates"] = {"policy vs SFT": judged.stats.to_dict()}
    metrics["failed_items"] += [{**f, "stage": "judge"} for f in judged.judgments.failed]
