"""The composition matrix experiment ([COMPOSITION]): one DPO model per annotator group.

Copies of the SFT model (also the reference) are DPO-trained, one per value of the annotator
attribute, on size-matched subsets of the training split; every model is then scored on every
group's held-out pairs (:func:`pluralign.evaluation.composition.composition_matrix`). The run
folder gets config.yaml, composition.csv (cells with CIs), composition_margin.csv,
composition_accuracy.csv, the two heatmaps, metrics.json and report.html.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from pluralign.config import config_from_dict
from pluralign.errors import ConfigError
from pluralign.evaluation.composition import ScoreFn, TrainFn, composition_matrix
from pluralign.evaluation.evaluate_run import PairSource
from pluralign.runs import write_config, write_report, write_table

SPLITS = ("pairs", "annotator")


@dataclass
class CompositionConfig(PairSource):
    """``pluralign experiment composition``.

    Attributes:
        model: local folder of the SFT model every group's copy starts from (also the
            reference).
        tokenizer: tokenizer folder (default: ``model``).
        attribute: annotator attribute whose groups each get their own model (``gender`` or
            ``attr.gender``).
        groups: groups to compare (default: every value present).
        n_per_group: training pairs per group (default: the smallest group's count).
        test_size: held-out fraction.
        split: hold out random ``pairs`` or whole annotators (``annotator``).
        training: PreferenceConfig fields of every group's DPO run (the models are not kept).
        max_length: token limit of training and scoring (unless ``training`` sets it).
        max_prompt_length: prompt token limit (unless ``training`` sets it).
        batch_size: scoring batch size.
        n_boot: bootstrap resamples of the cell CIs.
        seed: seed of the split, the training runs and the bootstrap.
        output_dir: run folder.
    """

    model: str | None = None
    tokenizer: str | None = None
    attribute: str | None = None
    groups: list[str] | None = None
    n_per_group: int | None = None
    test_size: float = 0.2
    split: str = "pairs"
    training: dict[str, Any] = field(default_factory=dict)
    max_length: int = 128
    max_prompt_length: int = 64
    batch_size: int = 32
    n_boot: int = 1000
    seed: int = 0
    output_dir: str = "runs/composition"

    def __post_init__(self) -> None:
        if self.model is None or self.attribute is None:
            raise ConfigError("composition needs model=SFT_FOLDER and attribute=ATTR")
        super().__post_init__()
        if self.split not in SPLITS:
            raise ConfigError(f"split={self.split!r} is unknown; use one of {', '.join(SPLITS)}")

    def preference_config(self, output_dir: str | Path) -> Any:
        """PreferenceConfig of every group's run; ``output_dir`` is scratch (no checkpoints)."""
        from pluralign.training import PreferenceConfig

        values = {"max_length": self.max_length, "max_prompt_length": self.max_prompt_length,
                  "seed": self.seed, **self.training,
                  "output_dir": str(output_dir), "save_strategy": "no", "report_to": "none"}
        return config_from_dict(PreferenceConfig, values, "composition training")


def tiny_dpo_functions(sft_model: Any, tokenizer: Any, config: Any,
                       margin_kwargs: dict[str, Any] | None = None) -> tuple[TrainFn, ScoreFn]:
    """``(train_fn, score_fn)`` that fine-tune copies of ``sft_model`` with
    :class:`~pluralign.training.PreferenceTrainer` under ``config`` (a ``PreferenceConfig``) and
    score held-out margins against ``sft_model`` as reference."""
    from pluralign.evaluation.margins import preference_margins
    from pluralign.training import PreferenceTrainer

    kwargs = {"max_length": config.max_length, "max_prompt_length": config.max_prompt_length,
              "progress": False, **(margin_kwargs or {})}

    def train_fn(subset: datasets.Dataset) -> Any:
        policy = copy.deepcopy(sft_model).requires_grad_(True)
        PreferenceTrainer(policy, ref_model=sft_model, args=copy.deepcopy(config),
                          train_dataset=subset, processing_class=tokenizer).train()
        return policy

    def score_fn(policy: Any, pairs: datasets.Dataset) -> np.ndarray:
        return preference_margins(policy, sft_model, pairs, tokenizer, **kwargs)[
            "margin"].to_numpy()

    return train_fn, score_fn


def main(config: CompositionConfig) -> dict[str, Any]:
    """Train and score the matrix, write the run folder and print the summary."""
    import torch

    from pluralign.data.splits import split_by_annotator, train_test_split_pairs
    from pluralign.evaluation.plots import plot_composition
    from pluralign.training import load_causal_lm, load_tokenizer

    out = Path(config.output_dir)
    attribute = config.attribute.removeprefix("attr.")
    with tempfile.TemporaryDirectory(prefix="pluralign-composition-") as scratch:
        pref = config.preference_config(scratch)
        dataset = config.load()
        splitter = split_by_annotator if config.split == "annotator" else train_test_split_pairs
        split = splitter(dataset, config.test_size, seed=config.seed)
        torch.manual_seed(config.seed)
        sft = load_causal_lm(config.model).eval()
        tokenizer = load_tokenizer(config.tokenizer or config.model)
        train_fn, score_fn = tiny_dpo_functions(sft, tokenizer, pref,
                                                margin_kwargs={"batch_size": config.batch_size})
        result = composition_matrix(split["train"], split["test"], attribute, train_fn,
                                    score_fn, n=config.n_per_group, groups=config.groups,
                                    n_boot=config.n_boot, seed=config.seed)
    write_config(out, config)
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
                  f" split by {config.split} (test_size={config.test_size}), seed {config.seed}.",
                  "Margins are policy-minus-reference log-probability differences; the "
                  "reference is the SFT model."],
    }
    write_report(out, metrics)
    for line in metrics["summary"]:
        print(line)
    print(f"wrote {out / 'report.html'}, {out / 'metrics.json'}, {out / 'composition.csv'}")
    return metrics
