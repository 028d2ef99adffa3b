"""Experiment: group-robust DPO vs DPO and MixDPO on a majority/minority population.

A synthetic population (:mod:`pluralign.data.synthetic`) with two latent user types, a majority
(share ``majority_share``, ~80%) and a minority, whose value weights differ so that their
preferences conflict on part of the compared pairs (the share is measured on the held-out pairs
from the ground-truth rewards and reported). A tiny GPT-NeoX (no user information in the prompt)
is fine-tuned on prompt + chosen, then DPO, MixDPO (Gamma strength) and group-robust DPO (Ramesh
et al. 2024, :mod:`pluralign.objectives.group_robust`, groups = the latent user type) start from
the SFT model; its config has the sections of a train recipe (``model:``, ``data:``, ``sft:``,
``training:``) and training goes through :func:`pluralign.training.methods.train_methods`, as
the demo's. ``pluralign experiment group_robust [--config FILE] [key=value ...] --output-dir
DIR`` runs it (``configs/group_robust.yaml`` holds the shipped values); the run folder gets
config.yaml, metrics.json, report.html, group_accuracy.png and group_weights.png
(:mod:`pluralign.runs`).

On the held-out pairs: per-group, average (micro) and worst-group accuracy with
annotator-cluster bootstrap CIs (:mod:`pluralign.evaluation.worst_group`; an annotator's pairs are
not independent), the paired worst-group accuracy gain of group-robust DPO over DPO and over the
η = 0 baseline ``Static-RW`` (fixed group-balanced importance weights: does the minimax add
anything to reweighting?), its cost in average accuracy, and the group weights' trajectory.
``metrics.json`` carries ``worst_group_accuracy`` per method, ``worst_group_accuracy_gain`` =
{estimate, ci} and ``worst_group_accuracy_gain_vs_static``. One seed is not the evidence:
``seeds=[...]`` runs each seed into ``seed-<s>/`` (:mod:`pluralign.experiments.seeds`) and the
summary in ``output_dir`` gives the across-seed Student-t intervals of the gains and of the
average cost (same keys, ``{estimate, ci, n, sd, ...}`` over seeds).

The population's composition is exact, not drawn: exactly ``majority_share`` of the annotators
are of the majority type (``PopulationConfig.exact_type_shares``) and exactly ``conflict_share``
of the compared pairs are items on which the two types' rewards disagree
(``PopulationConfig.conflict_share``), so a seed changes which annotators, items, labels and
initialisations there are, but not how large the minority or the contested part is. Half the
pairs are held out (``test_size`` 0.5; 300 annotators × 12 pairs), so the minority has ~360
held-out pairs (72 with 100 annotators and 30% held out, too few for a worst-group interval
that excludes 0 on most seeds).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd

from pluralign.config import config_values
from pluralign.data.config import DataConfig
from pluralign.data.groups import group_ids
from pluralign.data.splits import train_test_split_pairs
from pluralign.data.synthetic import (
    Population,
    PopulationConfig,
    make_population,
    type_conflict,
)
from pluralign.errors import ConfigError, PluralignError
from pluralign.evaluation.margins import preference_margins
from pluralign.evaluation.replication import SeedInterval, paired_seed_interval
from pluralign.evaluation.subgroups import margin_gains
from pluralign.evaluation.worst_group import (
    CORRECT,
    WorstGroupSummary,
    with_correct,
    worst_group_gain,
    worst_group_summary,
)
from pluralign.evaluation.worst_group_plots import plot_group_accuracy, plot_group_weights
from pluralign.experiments.base import (
    TINY_SFT,
    PopulationExperimentConfig,
    print_summary,
    start_run,
    synthetic_data,
)
from pluralign.experiments.seeds import check_resume, check_seed_list, run_seeds, seed_folder
from pluralign.runs import format_estimate, write_config, write_report
from pluralign.training import PreferenceConfig, SFTConfig
from pluralign.training.methods import train_methods
from pluralign.training.recipe import (
    ModelConfig,
    build_base_model,
    build_tokenizer_for,
    pair_texts,
)
from pluralign.validation import OPEN_UNIT, check_fields

GROUP = "user_type"
MAJORITY, MINORITY = "majority", "minority"
BASELINE, ROBUST, STATIC = "DPO", "GR-DPO", "Static-RW"
#: The per-seed intervals resample whole annotators (their pairs are not independent).
CLUSTER = "annotator_id"


def _default_data() -> DataConfig:
    return synthetic_data(0.5, n_annotators=300, pairs_per_annotator=12, n_prompts=60, n_types=2,
                          type_spread=1.0, strength="point", beta=5.0, reward_scale=3.0,
                          demographic_signal=0.0, text_style="compact")


#: Shared by SFT and training (the lengths also limit scoring): configs/group_robust.yaml.
_SHARED_ARGS = {"max_length": 48, "max_prompt_length": 28, "use_cpu": True}


def _default_sft() -> SFTConfig:
    return SFTConfig(**TINY_SFT, **_SHARED_ARGS)


def _default_training() -> PreferenceConfig:
    return PreferenceConfig(learning_rate=1e-3, strength_learning_rate=3e-2, num_train_epochs=3,
                            per_device_train_batch_size=16, logging_steps=1, **_SHARED_ARGS)


def _default_methods() -> dict[str, dict[str, Any]]:
    return {"DPO": {"objective": "dpo"},
            "MixDPO": {"objective": "mixdpo", "strength": "gamma"},
            "GR-DPO": {"objective": "group_dpo", "group_by": GROUP, "group_step_size": 0.2,
                       "group_init": "proportional"},
            "Static-RW": {"objective": "group_dpo", "group_by": GROUP, "group_step_size": 0.0,
                          "group_init": "uniform"}}


@dataclass
class GroupRobustConfig(PopulationExperimentConfig):
    """The group-robust experiment: the sections of a train recipe plus its own fields (defaults:
    the shipped configuration, ``configs/group_robust.yaml``).

    Attributes:
        data: ``source: synthetic`` and the population (``data.population``: two types;
            ``type_spread`` sets how far the types' value weights differ; ``type_probs``,
            ``exact_type_shares`` and ``conflict_share`` are set from the fields below), with
            ``test_size`` of the pairs held out.
        methods: method name -> PreferenceConfig fields over ``training`` (must include ``DPO``
            and ``GR-DPO``; ``GR-DPO`` groups by the ``user_type`` column, η =
            ``group_step_size``, its weights start at the training shares
            (``group_init: proportional``) or, as the authors', uniform (``uniform``);
            ``Static-RW``, when present, is the η = 0 baseline: ``group_dpo`` with
            ``group_step_size: 0`` and ``group_init: uniform``, i.e. DPO with fixed
            group-balanced importance weights (1/K)/p_g). ``training.max_length`` and
            ``training.max_prompt_length`` also limit the held-out scoring.
        majority_share: exact share of majority-type annotators (the minority has the rest).
        conflict_share: exact share of compared pairs on which the two types disagree.
        seeds: run every seed into ``seed-<s>/`` (a complete single-seed run folder, reused
            when finished with the same configuration) and summarise over them in
            ``output_dir``: across-seed Student-t intervals of the worst-group gains and the
            average cost (None: one run with ``seed``).
        resume: with ``seeds``, continue the run in output_dir (finished seeds of the same
            configuration are reused; without it a non-empty output_dir is refused unless
            overwrite=true).
    """

    output_dir: str = "runs/group_robust"
    model: ModelConfig = field(default_factory=lambda: ModelConfig(tokenizer_vocab_size=300))
    data: DataConfig = field(default_factory=_default_data)
    sft: SFTConfig | None = field(default_factory=_default_sft)
    training: PreferenceConfig = field(default_factory=_default_training)
    methods: dict[str, dict[str, Any]] = field(default_factory=_default_methods)
    n_boot: int = 2000
    progress: bool = False
    majority_share: float = 0.8
    conflict_share: float = 0.45
    seeds: list[int] | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        check_resume(self)
        check_fields(self, {"majority_share": {**OPEN_UNIT, "minimum": 0.5},
                            "conflict_share": {"minimum": 0, "maximum": 1}})
        super().__post_init__()
        if BASELINE not in self.methods or ROBUST not in self.methods:
            raise ConfigError(f"group-robust methods must include {BASELINE!r} and {ROBUST!r}, "
                              f"got {sorted(self.methods)}")
        n_types = (self.data.population or PopulationConfig()).n_types
        if n_types != 2:
            raise ConfigError(f"GroupRobustConfig.data.population.n_types={n_types!r}: this "
                              "experiment is defined for two groups (majority and minority); "
                              "use n_types: 2")
        if self.seeds is not None:
            check_seed_list(self.seeds, "GroupRobustConfig")
            if self.seed != 0:
                raise ConfigError(f"GroupRobustConfig: seed={self.seed} and seeds={self.seeds} "
                                  "both set; use seeds=[...] alone")
        population = self.population_config()
        minority = population.n_annotators - round(population.n_annotators * self.majority_share)
        if minority < 2 or population.n_annotators - minority < 2:
            raise ConfigError(
                f"GroupRobustConfig: data.population.n_annotators={population.n_annotators} with "
                f"majority_share={self.majority_share} leaves {minority} minority annotator(s); "
                "each group needs >= 2 (one in training, one held out): raise n_annotators")

    def seed_config(self, seed: int) -> GroupRobustConfig:
        """One seed's single-run configuration, in its folder ``seed-<seed>/``."""
        return dataclasses.replace(self, seed=seed, seeds=None,
                                   output_dir=str(seed_folder(self.output_dir, seed)))

    def population_config(self) -> PopulationConfig:
        """The two-type population of this experiment."""
        return dataclasses.replace(self.population(), n_types=2,
                                   type_probs=[self.majority_share, 1 - self.majority_share],
                                   exact_type_shares=True, conflict_share=self.conflict_share)


def _labelled(pop: Population) -> tuple[datasets.Dataset, np.ndarray]:
    """The pairs with a ``user_type`` column (majority/minority) and each pair's conflict flag."""
    shares = np.bincount(pop.truth.annotator_type, minlength=2)
    majority = int(np.argmax(shares))
    types = np.asarray(pop.dataset["type_id"])
    names = np.where(types == majority, MAJORITY, MINORITY)
    rewards = pop.truth.type_weights @ pop.truth.features.T                  # [type, response]
    chosen, rejected = (np.asarray(pop.dataset[c]) for c in ("chosen_id", "rejected_id"))
    conflict = type_conflict(rewards, chosen, rejected) == 1
    data = pop.dataset.add_column(GROUP, names.tolist()).add_column("conflict", conflict.tolist())
    return data, conflict


def _weight_trajectory(trainer: Any) -> dict[str, Any]:
    """Group weights at step 0 (the start) and after every logged step."""
    rows = [h for h in trainer.state.log_history if "loss" in h and f"group_weight/{MINORITY}" in h]
    start = dict(zip(trainer.objective.group_names, trainer.objective.start_weights().tolist(),
                     strict=True))
    return {"step": [0] + [int(h["step"]) for h in rows],
            "weights": {g: [start[g]] + [float(h[f"group_weight/{g}"]) for h in rows]
                        for g in (MAJORITY, MINORITY)}}


def _train_methods(cfg: GroupRobustConfig, splits: Any, tokenizer: Any, out: Path
                   ) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    margins, trajectory = {}, {}
    model = build_base_model(cfg.model, tokenizer, cfg.seed)
    for method, policy, sft_model, trainer in train_methods(cfg, splits["train"], tokenizer,
                                                            model, out):
        if method == ROBUST:
            trajectory = _weight_trajectory(trainer)
        margins[method] = preference_margins(policy, sft_model, splits["test"], tokenizer,
                                             max_length=cfg.training.max_length,
                                             max_prompt_length=cfg.training.max_prompt_length,
                                             progress=cfg.progress)
    return margins, trajectory


def _check_groupings(config: GroupRobustConfig, train: datasets.Dataset) -> None:
    """Every method's ``group_by`` maps the training pairs to >= 2 groups, checked before any
    training (a bad one would otherwise fail after the earlier methods had trained)."""
    for method, values in config.methods.items():
        group_by = values.get("group_by", config.training.group_by)
        if not group_by:
            continue
        try:
            names = group_ids(train, group_by).names
        except PluralignError as err:
            raise ConfigError(f"methods.{method}: {err}") from None
        if len(names) < 2:
            raise ConfigError(f"methods.{method}: group_by={group_by!r} has one group "
                              f"({names[0]}) in the training pairs; a group-robust objective "
                              "needs >= 2 groups: pick another group_by")


def run_group_robust(config: GroupRobustConfig) -> dict[str, Any]:
    """Run the experiment into ``config.output_dir`` (config.yaml, metrics.json, report.html,
    PNGs); returns the metrics."""
    start = time.perf_counter()
    out = start_run(config)
    data, conflict = _labelled(make_population(config.population_config()))
    splits = train_test_split_pairs(data, config.data.test_size, seed=config.seed)
    for part in ("train", "test"):
        missing = {MAJORITY, MINORITY} - set(splits[part][GROUP])
        if missing:
            raise ConfigError(f"GroupRobustConfig: the {part} split of seed {config.seed} has no "
                              f"{sorted(missing)[0]} pairs; raise data.population.n_annotators "
                              "or pairs_per_annotator")
    _check_groupings(config, splits["train"])
    tokenizer = build_tokenizer_for(config.model, lambda: pair_texts(splits["train"]))
    margins, trajectory = _train_methods(config, splits, tokenizer, out)
    summaries = {m: worst_group_summary(df, GROUP, n_boot=config.n_boot, seed=config.seed,
                                        cluster=CLUSTER)
                 for m, df in margins.items()}
    gains = {base: worst_group_gain(margins[ROBUST], margins[base], GROUP, n_boot=config.n_boot,
                                    seed=config.seed, cluster=CLUSTER)
             for base in (BASELINE, STATIC) if base in margins}
    cost = margin_gains(with_correct(margins[BASELINE]), with_correct(margins[ROBUST]), [GROUP],
                        CORRECT, n_boot=config.n_boot, seed=config.seed).micro
    plot_group_accuracy(summaries, out / "group_accuracy.png")
    if trajectory.get("step"):
        plot_group_weights(trajectory["step"], trajectory["weights"], out / "group_weights.png",
                           title=f"{ROBUST} group weights α")
    test_conflict = float(np.mean(splits["test"]["conflict"]))
    metrics = _metrics(config, summaries, gains, cost, trajectory,
                       {"all_pairs": float(conflict.mean()), "test_pairs": test_conflict},
                       time.perf_counter() - start)
    write_config(out, config_values(config))
    write_report(out, metrics)
    return metrics


def run_group_robust_seeds(config: GroupRobustConfig) -> dict[str, Any]:
    """Run (or reuse) every seed of ``config.seeds`` into ``seed-<s>/`` and write the summary
    over seeds into ``config.output_dir``; returns the summary metrics."""
    out = Path(config.output_dir)
    seeds = config.seeds or [config.seed]

    def summarise(done: dict[int, dict[str, Any]]) -> dict[str, Any]:
        metrics = seed_summary(config, done)
        write_config(out, config_values(config))
        write_report(out, metrics)
        return metrics

    done = run_seeds(seeds, config.seed_config, run_group_robust, progress=True,
                     desc="group_robust", after_seed=summarise)
    return summarise(done)


def _t(values: list[float]) -> SeedInterval:
    return paired_seed_interval(values, 0.95)


def _seed_estimate(interval: SeedInterval) -> dict[str, Any]:
    """``{estimate, ci}`` (the keys of a single run's gain) from a t-interval over seeds; an
    interval undefined below 2 seeds is None (JSON has no NaN)."""
    def finite(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return {"estimate": interval.mean, "ci": [finite(interval.ci_low), finite(interval.ci_high)],
            "level": interval.level, "n": interval.n, "over": "seeds (Student t)",
            "sd": finite(interval.sd), "p_value": finite(interval.p_value)}


def seed_summary(config: GroupRobustConfig, done: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Across-seed summary of single-seed metrics ``{seed: metrics}``: per method the mean
    worst-group and average accuracy, and the Student-t intervals over seeds of the per-seed
    differences GR-DPO − DPO and GR-DPO − Static-RW (worst group) and DPO − GR-DPO (average:
    the cost). Each seed is one paired difference (all methods share its population, split and
    SFT model), so the interval is
    :func:`~pluralign.evaluation.replication.paired_seed_interval`."""
    seeds = list(done)
    methods = list(done[seeds[0]]["worst_group_accuracy"])
    worst = {m: [done[s]["worst_group_accuracy"][m]["mean"] for s in seeds] for m in methods}
    average = {m: [done[s]["average_accuracy"][m]["mean"] for s in seeds] for m in methods}
    fields = {"worst_group_accuracy_gain": [a - b for a, b in
                                            zip(worst[ROBUST], worst[BASELINE], strict=True)],
              "average_accuracy_cost": [a - b for a, b in
                                        zip(average[BASELINE], average[ROBUST], strict=True)]}
    if STATIC in methods:
        fields["worst_group_accuracy_gain_vs_static"] = [
            a - b for a, b in zip(worst[ROBUST], worst[STATIC], strict=True)]
        fields["average_accuracy_cost_vs_static"] = [
            a - b for a, b in zip(average[STATIC], average[ROBUST], strict=True)]
    intervals = {k: _t(v) for k, v in fields.items()}
    n = len(seeds)

    def line(key: str, text: str) -> str:
        i = intervals[key]
        ci = "no interval from one seed" if n < 2 else \
            f"95% t-interval over {n} seeds [{i.ci_low:+.3f}, {i.ci_high:+.3f}]"
        return f"{text}: {i.mean:+.3f}, {ci}."

    summary = [line("worst_group_accuracy_gain", f"Worst-group accuracy, {ROBUST} − {BASELINE}")]
    if STATIC in methods:
        summary.append(line("worst_group_accuracy_gain_vs_static",
                            f"Worst-group accuracy, {ROBUST} − {STATIC} (η = 0)"))
    summary.append(line("average_accuracy_cost", f"Average accuracy cost, {BASELINE} − {ROBUST}"))
    if STATIC in methods:
        summary.append(line("average_accuracy_cost_vs_static",
                            f"Average accuracy cost, {STATIC} − {ROBUST}"))
    summary.append(f"Per seed, the intervals are annotator-cluster bootstraps (seed-<s>/"
                   f"metrics.json); the seed is the unit here. Seeds: {seeds}.")
    per_method = {m: {"worst_group_accuracy": _seed_estimate(_t(worst[m])),
                      "average_accuracy": _seed_estimate(_t(average[m]))} for m in methods}

    def cell(values: list[float]) -> str:
        i = _t(values)
        return f"{i.mean:.3f}" + ("" if n < 2 else f" [{i.ci_low:.3f}, {i.ci_high:.3f}]")

    rows = [[s, *(f"{done[s]['worst_group_accuracy'][m]['mean']:.3f}" for m in methods)]
            for s in seeds]
    return {
        "title": "pluralign experiment: group-robust DPO over seeds",
        "summary": summary,
        **{k: _seed_estimate(i) for k, i in intervals.items()},
        "per_method": per_method,
        "seeds": {str(s): {"worst_group_accuracy": {m: worst[m][j] for m in methods},
                           "average_accuracy": {m: average[m][j] for m in methods},
                           "worst_group_accuracy_gain": done[s]["worst_group_accuracy_gain"]}
                  for j, s in enumerate(seeds)},
        "tables": [{"title": f"Held-out accuracy, mean over {n} seed(s) [95% t-interval]",
                    "columns": ["method", "worst group", "average"],
                    "rows": [[m, cell(worst[m]), cell(average[m])] for m in methods]},
                   {"title": "Worst-group accuracy per seed",
                    "columns": ["seed", *methods], "rows": rows}],
        "config": config_values(config),
    }


def main(config: GroupRobustConfig) -> dict[str, Any]:
    """Run the experiment and print worst-group and average accuracy per method, the summary
    and where the report is."""
    from rich.console import Console
    from rich.table import Table

    if config.seeds is not None:
        metrics = run_group_robust_seeds(config)
        console = Console()
        print_summary(console, metrics, config.output_dir)
        return metrics
    metrics = run_group_robust(config)
    console = Console()
    table = Table(title="Held-out accuracy (95% annotator-cluster bootstrap CI)")
    for col in ("method", "worst group", "average"):
        table.add_column(col)
    for method, worst in metrics["worst_group_accuracy"].items():
        table.add_row(method, format_estimate(worst, ".3f"),
                      format_estimate(metrics["average_accuracy"][method], ".3f"))
    console.print(table)
    print_summary(console, metrics, config.output_dir)
    return metrics


def _metrics(cfg: GroupRobustConfig, summaries: dict[str, WorstGroupSummary],
             gains: dict[str, dict[str, Any]], cost: Any, trajectory: dict[str, Any],
             conflict: dict[str, float], runtime: float) -> dict[str, Any]:
    gain = gains[BASELINE]
    holds = gain["ci"][0] > 0
    worst = {m: s.worst_group_accuracy.to_dict() for m, s in summaries.items()}
    average = {m: s.accuracy.micro.to_dict() for m, s in summaries.items()}
    final = {g: w[-1] for g, w in trajectory.get("weights", {}).items() if w}
    claim = (f"Worst-group held-out accuracy, {ROBUST} − {BASELINE}: {gain['estimate']:+.3f} "
             f"[95% annotator-cluster bootstrap CI {gain['ci'][0]:+.3f}, {gain['ci'][1]:+.3f}] — "
             + ("the interval lies above 0." if holds else "the interval does NOT lie above 0."))
    static = ([f"Worst-group held-out accuracy, {ROBUST} − {STATIC} (η = 0, group-balanced "
               f"weights): {gains[STATIC]['estimate']:+.3f} [{gains[STATIC]['ci'][0]:+.3f}, "
               f"{gains[STATIC]['ci'][1]:+.3f}]."] if STATIC in gains else [])
    summary = [
        claim, *static,
        f"Average (micro) accuracy cost, {BASELINE} − {ROBUST}: {cost.mean:+.3f} "
        f"[{cost.ci_low:+.3f}, {cost.ci_high:+.3f}].",
        *[f"{m}: worst group {s.worst_group} {s.worst_group_accuracy.mean:.3f}, average "
          f"{s.accuracy.micro.mean:.3f}, macro {s.accuracy.macro.mean:.3f}"
          for m, s in summaries.items()],
        f"Majority and minority preferences conflict on {conflict['test_pairs']:.0%} of the "
        "held-out pairs (ground-truth rewards).",
        f"Final {ROBUST} group weights: " + ", ".join(f"{g} {w:.3f}" for g, w in final.items()),
        f"Runtime {runtime:.0f} s.",
    ]
    tables = [{"title": "Held-out accuracy: average, macro and worst group (95% annotator-cluster "
                        "bootstrap CIs)",
               "columns": ["method", "average", "macro", "worst group", "worst-group CI"],
               "rows": [[m, s.accuracy.micro.mean, s.accuracy.macro.mean,
                         s.worst_group_accuracy.mean,
                         f"[{s.worst_group_accuracy.ci_low:.3f}, "
                         f"{s.worst_group_accuracy.ci_high:.3f}]"]
                        for m, s in summaries.items()]},
              {"title": "Held-out accuracy per group (95% annotator-cluster bootstrap CIs)",
               "columns": ["method", "group", "pairs", "accuracy", "CI low", "CI high"],
               "rows": [[m, r["group"], r["count"], r["mean"], r["ci_low"], r["ci_high"]]
                        for m, s in summaries.items()
                        for r in s.accuracy.groups.to_dict(orient="records")]}]
    return {
        "title": "pluralign experiment: group-robust DPO on a majority/minority population",
        "summary": summary,
        "claim": {"holds": bool(holds), "text": claim},
        "worst_group_accuracy": worst,
        "average_accuracy": average,
        "worst_group_accuracy_gain": gain,
        **({"worst_group_accuracy_gain_vs_static": gains[STATIC]} if STATIC in gains else {}),
        "average_accuracy_cost": cost.to_dict(),
        "per_group": {m: s.to_dict() for m, s in summaries.items()},
        "group_weights": trajectory,
        "conflict_share": conflict,
        "tables": tables,
        "figures": [{"file": "group_accuracy.png",
                     "caption": "Held-out accuracy per user type and method (95% CIs); dashes = "
                                "average accuracy."},
                    {"file": "group_weights.png",
                     "caption": f"{ROBUST} group weights α_g during training."}],
        "config": config_values(cfg),
        "runtime_seconds": runtime,
    }
