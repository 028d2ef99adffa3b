"""The ``evaluate`` and ``diagnose`` runs: a config dataclass each and one function that
writes the run folder (:mod:`pluralign.runs`); ``pluralign evaluate|diagnose`` parse into them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pluralign.evaluation.errors import EvaluationError
from pluralign.runs import read_table
from pluralign.validation import (
    COUNT,
    INDEX,
    NON_NEGATIVE,
    POSITIVE,
    check_fields,
    check_lengths,
    check_names,
    check_number,
)


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
            raise EvaluationError("pass exactly one of data (preference data) and population "
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
            raise EvaluationError("evaluate needs model=FOLDER and --output-dir DIR")
        super().__post_init__()
        check_fields(self, {"n_prompts": COUNT, "batch_size": COUNT, "n_boot": COUNT,
                            "seed": INDEX})
        check_lengths(self.max_length, self.max_prompt_length, "EvaluateConfig")
        self.by = check_names(self.by, "EvaluateConfig.by")


@dataclass
class DiagnoseConfig:
    """``pluralign diagnose``: the preference-strength heterogeneity diagnostic.

    Attributes:
        margins: CSV/parquet with one margin per pair.
        population: saved synthetic population folder (its true margins).
        column: margin column (default: margin; true_margin for ``population``).
        family: fitted strength family, gamma or lognormal.
        by: subgroup columns: a strength fit per group (mean, CV^2 with CIs) and a test that
            the groups share one distribution.
        cluster: resampling unit of the bootstrap, e.g. annotator_id.
        runs: MixDPO run folders whose logged Var[beta] and E[beta] get a CV^2 trajectory verdict.
        compare: name -> margins file, to rank several datasets by CV^2.
        n_boot: bootstrap refits (0: fits without bootstrap intervals).
        seed: bootstrap and power-simulation seed.
        power_pairs: pairs per population (one or a list) at which to simulate the power to
            separate CV^2 power_cv2_a from power_cv2_b at 95% (Gamma fits on true margins).
        power_cv2_a: CV^2 of the first simulated population.
        power_cv2_b: CV^2 of the second simulated population (0 = one beta for everyone).
        power_pairs_per_annotator: pairs each simulated annotator labels with one beta.
        power_margin_scale: standard deviation of the simulated true margins.
        power_sims: simulated pairs of populations per power estimate.
        output_dir: run folder.
    """

    margins: str | None = None
    population: str | None = None
    column: str | None = None
    family: str = "gamma"
    by: list[str] = field(default_factory=list)
    cluster: str | None = None
    runs: list[str] = field(default_factory=list)
    compare: dict[str, str] = field(default_factory=dict)
    n_boot: int = 100
    seed: int = 0
    power_pairs: int | list[int] = field(default_factory=list)
    power_cv2_a: float = 0.75
    power_cv2_b: float = 0.5
    power_pairs_per_annotator: int = 1
    power_margin_scale: float = 2.0
    power_sims: int = 100
    output_dir: str | None = None

    def __post_init__(self) -> None:
        if self.output_dir is None:
            raise EvaluationError("diagnose needs --output-dir DIR")
        if not isinstance(self.power_pairs, list):
            self.power_pairs = [self.power_pairs]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in self.power_pairs):
            raise EvaluationError(f"power_pairs={self.power_pairs!r}: give whole numbers of "
                                  "pairs, e.g. power_pairs=2000 or \"power_pairs=[500, 2000]\"")
        if self.family not in ("gamma", "lognormal"):
            raise EvaluationError(f"family={self.family!r} is unknown; use gamma or lognormal")
        check_fields(self, {"n_boot": INDEX, "seed": INDEX,  # n_boot 0: no bootstrap CIs
                            **dict.fromkeys(("power_cv2_a", "power_cv2_b"), NON_NEGATIVE),
                            "power_margin_scale": POSITIVE,
                            **dict.fromkeys(("power_pairs_per_annotator", "power_sims"), COUNT)})
        for n in self.power_pairs:
            check_number(n, "DiagnoseConfig.power_pairs", **COUNT)
        self.by = check_names(self.by, "DiagnoseConfig.by")
        self.runs = check_names(self.runs, "DiagnoseConfig.runs") if self.runs else []
        if not isinstance(self.compare, dict):
            raise EvaluationError(f"DiagnoseConfig.compare={self.compare!r} is invalid; use a "
                                  "mapping name -> margins file, e.g. compare.prism=a.csv")


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
        raise EvaluationError("win rates compare the policy with its SFT baseline: set "
                              "ref_model")
    if config.judge_url:
        if not config.judge_name:
            raise EvaluationError("judge_url needs judge_name (the judge model)")
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


def run_diagnosis(config: DiagnoseConfig) -> dict[str, Any]:
    """Fit, profile and verdict as asked; write the run folder (config.yaml, figures,
    metrics.json, report.html)."""
    import numpy as np

    from pluralign.evaluation.diagnose import compare_heterogeneity, diagnose
    from pluralign.evaluation.plots import plot_variance_trajectories
    from pluralign.runs import write_config, write_report, write_table

    out = Path(config.output_dir)
    column = config.column or ("true_margin" if config.population else "margin")
    df = None
    if config.population:
        from pluralign.data import to_pandas
        from pluralign.data.synthetic import load_population

        df = to_pandas(load_population(config.population).dataset)
    elif config.margins:
        wanted = [column, *config.by, *([config.cluster] if config.cluster else [])]
        df = read_table(config.margins, required=wanted)
    runs = {Path(r).name or r: r for r in config.runs}
    metrics: dict[str, Any] = {"title": "pluralign diagnose", "figures": [], "diagnostics": {}}
    if df is not None or runs:
        d = diagnose(df, margin=column, family=config.family, by=config.by, runs=runs,
                     cluster=config.cluster, n_boot=config.n_boot, seed=config.seed)
        metrics["summary"] = d.summary
        metrics["diagnosis"] = d.to_dict()
        if d.subgroups is not None:
            write_table(out, "subgroup_strength.csv", d.subgroups.table)
        metrics["diagnostics"].update({k: v.explanation for k, v in d.trajectories.items()})
        if d.trajectories:
            plot_variance_trajectories(d.trajectories, out / "fig4_beta_variance.png")
            metrics["figures"].append({"file": "fig4_beta_variance.png",
                                       "caption": "Learned Var[beta] during training"})
    if config.compare:
        cmp = compare_heterogeneity({n: np.asarray(read_table(f, required=(column,))[column],
                                                      dtype=float)
                                     for n, f in config.compare.items()}, config.family,
                                    n_boot=config.n_boot,
                                    seed=config.seed)
        metrics["comparison"] = cmp.to_dict()
        metrics["diagnostics"]["ranking by CV²"] = " > ".join(cmp.ranking)
    if config.power_pairs:
        _power(config, metrics)
    if len(metrics) == 3 and not metrics["diagnostics"]:
        raise EvaluationError("nothing to diagnose: set margins, population, runs, compare or "
                              "power_pairs")
    write_config(out, config)
    path = write_report(out, metrics)
    for line in metrics.get("summary", []) + [f"{k}: {v}" for k, v in
                                               metrics["diagnostics"].items()]:
        print(line)
    print(f"wrote {path}")
    return metrics


def _power(config: DiagnoseConfig, metrics: dict[str, Any]) -> None:
    """Simulated power to separate the two CV² at each ``power_pairs`` (into ``metrics``)."""
    from pluralign.evaluation.power import separation_power

    results = [separation_power(n, config.power_cv2_a, config.power_cv2_b,
                                pairs_per_annotator=config.power_pairs_per_annotator,
                                margin_scale=config.power_margin_scale, n_sims=config.power_sims,
                                seed=config.seed)
               for n in config.power_pairs]
    metrics["power"] = [r.to_dict() for r in results]
    for r in results:
        metrics["diagnostics"][f"power at {r.n_pairs} pairs"] = (
            f"separates CV² {r.cv2_a:g} from {r.cv2_b:g} at 95% in {r.power:.0%} of {r.n_sims} "
            f"simulations (95% CI {r.power_ci[0]:.0%}–{r.power_ci[1]:.0%}; "
            f"{r.pairs_per_annotator} pair(s) per annotator)")
