"""The composition matrix experiment ([COMPOSITION]): one DPO model per annotator group.

Copies of the SFT model (also the reference) are DPO-trained, one per value of the annotator
attribute, on size-matched subsets of the training split; every model is then scored on every
group's held-out pairs (:func:`pluralign.evaluation.composition.composition_matrix`). The run
folder gets config.yaml, composition.csv (cells with CIs), composition_margin.csv,
composition_accuracy.csv, the two heatmaps, metrics.json and report.html. With ``mix`` (default)
one more model is trained on as many pairs drawn from all groups (row ``mix``); the cell
intervals resample whole annotators.

With ``seeds=[...]`` each seed is a complete run folder ``seed-<s>/``
(:mod:`pluralign.experiments.seeds`: finished seeds reused, a changed configuration refused) and
``output_dir`` gets the summary over seeds: the matrices averaged over seeds, the own-group
advantage in percentage points of held-out accuracy (and in margin) with its Student-t interval
over seeds (the seed is the unit), and the per-seed values. The data (a saved population or any
source) are the same for every seed; the seed changes the split, the size-matched subsets and
the training.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd

from pluralign.config import changed_fields, config_from_dict, config_values
from pluralign.data.config import DataConfig
from pluralign.errors import ConfigError
from pluralign.evaluation.composition import ScoreFn, TrainFn, composition_matrix
from pluralign.evaluation.evaluate_run import check_data, check_trained_model
from pluralign.evaluation.margins import ScoringConfig
from pluralign.evaluation.replication import paired_seed_interval
from pluralign.experiments.base import data_seeds
from pluralign.experiments.seeds import check_resume, check_seed_list, run_seeds, seed_folder
from pluralign.runs import RunFolderOptions, write_config, write_report, write_table
from pluralign.training import PreferenceConfig
from pluralign.training.methods import check_seeds
from pluralign.training.recipe import ModelConfig, add_lora, check_lora
from pluralign.validation import COUNT, OPEN_UNIT, check_fields, check_number

SPLITS = ("pairs", "annotator")


@dataclass
class CompositionConfig(ScoringConfig, RunFolderOptions):
    """``pluralign experiment composition``.

    Attributes:
        model: the SFT model every group's copy starts from, also the reference, as in a train
            recipe (``model=DIR``; ``model.tokenizer`` when it is not in that folder).
        data: the pairs, as in a train recipe (``data=FILE``; a saved synthetic population is
            ``data=FOLDER``); ``data.test_size`` of them (> 0) are held out.
        attribute: annotator attribute whose groups each get their own model (``gender`` or
            ``attr.gender``).
        groups: groups to compare (default: every value present).
        n_per_group: training pairs per group (default: the smallest group's count).
        split: hold out random ``pairs`` or whole annotators (``annotator``).
        training: PreferenceConfig fields of every group's DPO run (the models are not kept);
            its max_length and max_prompt_length are the scoring ones unless set here.
        seed: seed of the split, the training runs and the bootstrap (a different
            ``data.seed`` or ``training.seed`` is refused).
        output_dir: run folder.
        lora: peft LoraConfig fields (e.g. ``{r: 16, lora_alpha: 32}``): every group's model is a
            fresh set of adapters on the SFT model instead of a full copy.
        mix: also train one model on pairs drawn from all the groups (row ``mix``).
        threads: torch CPU threads.
        seeds: run every seed into ``seed-<s>/`` and summarise over them (None: one run with
            ``seed``).
        resume: with ``seeds``, continue the run in output_dir (finished seeds of the same
            configuration are reused; without it a non-empty output_dir is refused unless
            overwrite=true).
    """

    model: ModelConfig | None = None
    data: DataConfig | None = None
    attribute: str | None = None
    groups: list[str] | None = None
    n_per_group: int | None = None
    split: str = "pairs"
    training: PreferenceConfig = field(default_factory=PreferenceConfig)
    output_dir: str = "runs/composition"
    lora: dict[str, Any] | None = None
    mix: bool = True
    threads: int = 1
    seeds: list[int] | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        check_resume(self)
        check_trained_model(self.model, "composition", "the SFT model")
        data = check_data(self.data, "composition")
        if self.attribute is None:
            raise ConfigError("composition needs attribute=ATTR (e.g. attr.gender)")
        if self.model.ref_model is not None:
            raise ConfigError("composition: every group's reference is the SFT model (model); "
                              "remove model.ref_model")
        super().__post_init__()
        check_number(data.test_size, "composition data.test_size", **OPEN_UNIT)
        check_seeds("composition", self.seed,
                    {**data_seeds(data), "training.seed": changed_fields(self.training).get(
                        "seed")})
        if self.split not in SPLITS:
            raise ConfigError(f"split={self.split!r} is unknown; use one of {', '.join(SPLITS)}")
        check_fields(self, {"threads": COUNT})
        if self.lora is not None:
            self.lora = check_lora(self.lora)
        if not isinstance(self.mix, bool):
            raise ConfigError(f"composition mix={self.mix!r} is invalid; use true or false")
        if self.seeds is not None:
            check_seed_list(self.seeds, "composition")
            if self.seed != 0:
                raise ConfigError(f"composition: seed={self.seed} and seeds={self.seeds} both "
                                  "set; use seeds=[...] alone")

    def seed_config(self, seed: int) -> CompositionConfig:
        """One seed's single-run configuration, in its folder ``seed-<seed>/``."""
        return dataclasses.replace(self, seed=seed, seeds=None,
                                   output_dir=str(seed_folder(self.output_dir, seed)))

    def preference_config(self, output_dir: str | Path) -> Any:
        """PreferenceConfig of every group's run; ``output_dir`` is scratch (no checkpoints)."""
        values = {"max_length": self.max_length, "max_prompt_length": self.max_prompt_length,
                  "seed": self.seed, **changed_fields(self.training),
                  "output_dir": str(output_dir), "save_strategy": "no", "report_to": "none"}
        return config_from_dict(PreferenceConfig, values, "composition training")


def tiny_dpo_functions(sft_model: Any, tokenizer: Any, config: Any,
                       margin_kwargs: dict[str, Any] | None = None,
                       lora: dict[str, Any] | None = None) -> tuple[TrainFn, ScoreFn]:
    """``(train_fn, score_fn)`` that fine-tune copies of ``sft_model`` (or, with ``lora``, fresh
    adapters on a copy) with :class:`~pluralign.training.PreferenceTrainer` under ``config`` (a
    ``PreferenceConfig``) and score held-out margins against ``sft_model`` as reference."""
    from pluralign.evaluation.margins import preference_margins
    from pluralign.training import PreferenceTrainer

    kwargs = {"max_length": config.max_length, "max_prompt_length": config.max_prompt_length,
              "progress": False, **(margin_kwargs or {})}

    def train_fn(subset: datasets.Dataset) -> Any:
        policy = copy.deepcopy(sft_model).requires_grad_(True)
        if lora is not None:
            policy = add_lora(policy, lora)
        PreferenceTrainer(policy, ref_model=sft_model, args=copy.deepcopy(config),
                          train_dataset=subset, processing_class=tokenizer).train()
        return policy

    def score_fn(policy: Any, pairs: datasets.Dataset) -> np.ndarray:
        return preference_margins(policy, sft_model, pairs, tokenizer, **kwargs)[
            "margin"].to_numpy()

    return train_fn, score_fn


def run_composition(config: CompositionConfig) -> dict[str, Any]:
    """Train and score the matrix of one seed; write the run folder; return the metrics."""
    import logging

    import torch

    from pluralign.data.config import load_data
    from pluralign.data.splits import split_by_annotator, train_test_split_pairs
    from pluralign.evaluation.plots import plot_composition
    from pluralign.training import load_causal_lm, load_tokenizer

    torch.set_num_threads(config.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    start = time.perf_counter()
    out = Path(config.output_dir)
    attribute = config.attribute.removeprefix("attr.")
    with tempfile.TemporaryDirectory(prefix="pluralign-composition-") as scratch:
        pref = config.preference_config(scratch)
        dataset, _ = load_data(dataclasses.replace(config.data, test_size=0))
        splitter = split_by_annotator if config.split == "annotator" else train_test_split_pairs
        split = splitter(dataset, config.data.test_size, seed=config.seed)
        torch.manual_seed(config.seed)
        sft = load_causal_lm(config.model.name_or_path).eval()
        tokenizer = load_tokenizer(config.model.tokenizer or config.model.name_or_path)
        train_fn, score_fn = tiny_dpo_functions(sft, tokenizer, pref,
                                                margin_kwargs={"batch_size": config.batch_size},
                                                lora=config.lora)
        cluster = "annotator_id" if "annotator_id" in split["test"].column_names else None
        result = composition_matrix(split["train"], split["test"], attribute, train_fn,
                                    score_fn, n=config.n_per_group, groups=config.groups,
                                    n_boot=config.n_boot, seed=config.seed, mix=config.mix,
                                    cluster=cluster)
    write_config(out, config_values(config))
    write_table(out, "composition.csv", result.to_frame())
    write_table(out, "composition_margin.csv", result.margin, index=True)
    write_table(out, "composition_accuracy.csv", result.accuracy, index=True)
    plot_composition(result.margin, out / "composition_margin.png")
    plot_composition(result.accuracy, out / "composition_accuracy.png",
                     value="preference accuracy (%)")
    metrics: dict[str, Any] = {
        "title": f"pluralign experiment composition: matrix by {attribute}",
        "summary": result.summary(),
        "composition": result.to_dict(),
        "own_group_advantage": result.own_group_advantage(),
        "own_group_advantage_pp": result.own_group_advantage("accuracy"),
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
        "notes": [f"Training: objective={pref.objective}, learning_rate={pref.learning_rate}, "
                  f"epochs={pref.num_train_epochs}, batch={pref.per_device_train_batch_size};"
                  f" split by {config.split} (test_size={config.data.test_size}), seed "
                  f"{config.seed}.",
                  "Margins are policy-minus-reference log-probability differences; the "
                  "reference is the SFT model. Cell intervals resample "
                  + ("whole annotators." if cluster else "pairs (no annotator_id column).")],
        "config": config_values(config),
        "runtime_seconds": time.perf_counter() - start,
    }
    write_report(out, metrics)
    return metrics


def seed_summary(config: CompositionConfig, done: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Over seeds ``{seed: metrics}``: the matrices averaged, and the own-group advantage (pp of
    held-out accuracy and margin) with its Student-t interval over seeds."""
    seeds = list(done)
    pp = [done[s]["own_group_advantage_pp"] for s in seeds]
    margin = [done[s]["own_group_advantage"] for s in seeds]
    accuracy = sum(pd.DataFrame(done[s]["composition"]["accuracy"]).T for s in seeds) / len(seeds)
    margins = sum(pd.DataFrame(done[s]["composition"]["margin"]).T for s in seeds) / len(seeds)
    intervals = {"own_group_advantage_pp": paired_seed_interval(pp),
                 "own_group_advantage": paired_seed_interval(margin)}

    def text(i: Any, spec: str) -> str:
        if i.n < 2:
            return f"{i.mean:{spec}} (one seed: no interval)"
        return f"{i.mean:{spec}} [95% t-interval over {i.n} seeds {i.ci_low:{spec}}, " \
               f"{i.ci_high:{spec}}]"

    def safe(i: Any) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in i.to_dict().items()}

    attribute = done[seeds[0]]["composition"]["attribute"]
    return {
        "title": f"pluralign experiment composition over seeds: matrix by {attribute}",
        "summary": [
            "Own-group advantage (mean diagonal − mean off-diagonal), pp of held-out accuracy: "
            + text(intervals["own_group_advantage_pp"], "+.2f") + ".",
            "Own-group advantage in margin: " + text(intervals["own_group_advantage"], "+.3g")
            + ".",
            f"Per seed (pp): {', '.join(f'{s}: {v:+.2f}' for s, v in zip(seeds, pp, strict=True))}"
            "; inside a seed the cell intervals resample annotators (seed-<s>/report.html)."],
        **{k: safe(i) for k, i in intervals.items()},
        "accuracy_mean": {str(a): {str(b): float(v) for b, v in row.items()}
                          for a, row in accuracy.iterrows()},
        "margin_mean": {str(a): {str(b): float(v) for b, v in row.items()}
                        for a, row in margins.iterrows()},
        "seeds": {str(s): {"own_group_advantage_pp": p, "own_group_advantage": m}
                  for s, p, m in zip(seeds, pp, margin, strict=True)},
        "tables": [{"title": f"Held-out accuracy (%), mean over {len(seeds)} seed(s): trained on "
                             "(rows) vs evaluated on (columns)",
                    "columns": ["trained on ↓ / evaluated on →", *map(str, accuracy.columns)],
                    "rows": [[a, *(f"{v:.1f}" for v in row)] for a, row in accuracy.iterrows()]}],
        "figures": [{"file": "composition_accuracy.png", "caption": "Held-out accuracy (%) "
                     f"averaged over {len(seeds)} seed(s): trained on (rows) vs evaluated on "
                     "(columns)"}],
        "config": config_values(config),
        "_accuracy_frame": accuracy,
    }


def main(config: CompositionConfig) -> dict[str, Any]:
    """Run one seed or every seed of ``config.seeds`` (then the summary over seeds), print the
    summary."""
    from pluralign.evaluation.plots import plot_composition

    if config.seeds is None:
        metrics = run_composition(config)
    else:
        out = Path(config.output_dir)

        def summarise(done: dict[int, dict[str, Any]]) -> dict[str, Any]:
            metrics = seed_summary(config, done)
            plot_composition(metrics.pop("_accuracy_frame"), out / "composition_accuracy.png",
                             value="preference accuracy (%)")
            write_config(out, config_values(config))
            write_report(out, metrics)
            return metrics

        done = run_seeds(config.seeds, config.seed_config, run_composition,
                         desc="composition", after_seed=summarise)
        metrics = summarise(done)
    for line in metrics["summary"]:
        print(line)
    print(f"wrote {Path(config.output_dir) / 'report.html'}")
    return metrics
