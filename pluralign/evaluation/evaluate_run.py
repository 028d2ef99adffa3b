"""``pluralign evaluate``: held-out preference margins of a policy by subgroup, and judged win
rates; its config dataclass and the one function that writes the run folder (:mod:`pluralign.runs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pluralign.errors import ConfigError
from pluralign.runs import read_table
from pluralign.validation import COUNT, INDEX, check_fields, check_lengths, check_names


@dataclass
class PairSource:
    """Preference pairs from a file/folder/Hub name or from a saved synthetic population.

    Attributes:
        data: preference data (file, folder or Hub name); exactly one of data and population.
        format: loader format of ``data`` (detected when omitted; see ``pluralign data``).
        population: saved synthetic population folder (instead of ``data``).
    """

    data: str | None = None
    format: str | None = None
    population: str | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.population is None):
            raise ConfigError("pass exactly one of data (preference data) and population "
                                  "(a saved synthetic population folder)")

    def load(self) -> Any:
        """The pairs as a ``datasets.Dataset``."""
        if self.population is not None:
            from pluralign.data.synthetic import load_population

            return load_population(self.population).dataset
        from pluralign.data import load_preferences

        return load_preferences(self.data, format=self.format)


@dataclass
class EvaluateConfig(PairSource):
    """``pluralign evaluate``: held-out preference margins by subgroup, and win rates.

    Attributes:
        model: local folder of the policy.
        ref_model: reference (SFT) model folder; margins are log-ratios against it.
        tokenizer: tokenizer folder (default: ``model``).
        by: subgroup columns (``attr.*`` / ``ctx.*``).
        baseline_margins: margins.csv of a baseline run, for per-subgroup margin gains.
        judge_model: local sequence-classification reward model folder (judge).
        judge_bt: folder of a pluralign Bradley-Terry reward model (MiniLM) as judge.
        judge_url: OpenAI-compatible base URL (opt-in).
        judge_name: model name at ``judge_url``.
        judge_key_env: env var holding the judge API key (never logged).
        n_prompts: prompts for win rates.
        max_length: prompt + completion token limit.
        max_prompt_length: prompt token limit.
        batch_size: scoring batch size.
        n_boot: bootstrap resamples.
        seed: seed of the bootstrap and the generations.
        output_dir: run folder.
    """

    model: str | None = None
    ref_model: str | None = None
    tokenizer: str | None = None
    by: list[str] = field(default_factory=list)
    baseline_margins: str | None = None
    judge_model: str | None = None
    judge_bt: str | None = None
    judge_url: str | None = None
    judge_name: str | None = None
    judge_key_env: str = "OPENAI_API_KEY"
    n_prompts: int = 200
    max_length: int = 128
    max_prompt_length: int = 64
    batch_size: int = 32
    n_boot: int = 1000
    seed: int = 0
    output_dir: str | None = None

    def __post_init__(self) -> None:
        if self.model is None or self.output_dir is None:
            raise ConfigError("evaluate needs model=FOLDER and --output-dir DIR")
        super().__post_init__()
        check_fields(self, {"n_prompts": COUNT, "batch_size": COUNT, "n_boot": COUNT,
                            "seed": INDEX})
        check_lengths(self.max_length, self.max_prompt_length, "EvaluateConfig")
        self.by = check_names(self.by, "EvaluateConfig.by")


def run_evaluation(config: EvaluateConfig) -> dict[str, Any]:
    """Score ``config.model`` on the pairs, tabulate by subgroup, judge win rates if asked, and
    write the run folder (config.yaml, margins.csv, figures, metrics.json, report.html)."""

    from pluralign.evaluation.plots import plot_margin_gains, plot_subgroup_margins
    from pluralign.evaluation.subgroups import margin_gains, subgroup_table
    from pluralign.runs import write_config, write_report, write_table
    from pluralign.training import load_causal_lm, load_tokenizer

    out = Path(config.output_dir)
    base = (read_table(config.baseline_margins, required=("margin", *config.by))
            if config.baseline_margins and config.by else None)
    dataset = config.load()
    model = load_causal_lm(config.model)
    ref = load_causal_lm(config.ref_model) if config.ref_model else None
    tokenizer = load_tokenizer(config.tokenizer or config.model)
    from pluralign.evaluation.margins import preference_margins

    df = preference_margins(model, ref, dataset, tokenizer, batch_size=config.batch_size,
                            max_length=config.max_length,
                            max_prompt_length=config.max_prompt_length)
    write_config(out, config)
    write_table(out, "margins.csv", df)
    metrics: dict[str, Any] = {"title": f"pluralign evaluate: {config.model}", "figures": [],
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
    if config.judge_model or config.judge_bt or config.judge_url:
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

    if ref is None:
        raise ConfigError("win rates compare the policy with its SFT baseline: set "
                              "ref_model")
    if config.judge_url:
        if not config.judge_name:
            raise ConfigError("judge_url needs judge_name (the judge model)")
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
