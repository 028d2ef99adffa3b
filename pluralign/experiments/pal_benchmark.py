"""PAL benchmark on synthetic populations with known user types ([PAL-NOTES]; [PAL]).

One run, one population with K opposed latent types plus its homogeneous control (same texts, pairs
and annotators; one type with the average weights), all items embedded by the real MiniLM encoder:

1. Annotators are split with :func:`pluralign.data.splits.split_by_annotator` into *seen* users
   (train) and *unseen* users (held out). Every user's last ``test_pairs_per_user`` pairs are test
   pairs; the earlier pairs are training pairs (seen users) or the adaptation pool (unseen users).
2. Models on the seen users' training pairs: PAL (K prototypes), a homogeneous Bradley–Terry model
   on the same frozen embeddings, and a per-type oracle (one Bradley–Terry model per true
   ``type_id``, each unseen pair scored by its annotator's true type's model).
3. Unseen users: PAL adapts only each new user's K mixture logits on their first n pairs, n in
   ``curve`` (the sample-efficiency curve); BT and the oracle need no per-user fitting.
4. Group recovery: adjusted Rand index between the users' dominant prototypes and their true types.
5. Relabeling ([DAHP, §6]): the oracle's per-type models, averaged with the population type
   shares, relabel the unseen users' anonymous pairs; agreement with the true average reward
   before and after.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pluralign.config import config_from_dict
from pluralign.data.splits import split_by_annotator
from pluralign.data.synthetic import Population, PopulationConfig, make_population
from pluralign.errors import ConfigError
from pluralign.io import atomic_path
from pluralign.reward.base import pairwise_accuracy
from pluralign.reward.bradley_terry import (
    BradleyTerryConfig,
    BradleyTerryRewardModel,
    train_per_group,
)
from pluralign.reward.clustering import adjusted_rand_index
from pluralign.reward.encoders import (
    DEFAULT_CACHE_DIR,
    ItemEncoder,
    MiniLMEncoder,
    PairEmbeddings,
    embed_pairs,
)
from pluralign.reward.pal import PALConfig, PALRewardModel
from pluralign.reward.relabel import relabel_with_average_reward
from pluralign.runs import RunFolderOptions, write_config, write_report
from pluralign.validation import COUNT, INDEX, OPEN_UNIT, check_fields, check_number

DEFAULT_POPULATION: dict[str, Any] = {
    "n_types": 3, "type_spread": 10.0, "seed": 143, "reward_scale": 12.0, "n_annotators": 160,
    "pairs_per_annotator": 150, "n_prompts": 100, "demographic_signal": 0.0,
}
CURVE = (1, 2, 5, 10, 20, 50, 100)
HEADLINE_N = 20


@dataclass
class BenchmarkConfig(RunFolderOptions):
    """Recipe of :func:`run_benchmark`.

    Attributes:
        population: :class:`~pluralign.data.synthetic.PopulationConfig` fields. The default
            (seed 143, ``type_spread`` 10) draws 3 types whose value weights are pairwise opposed
            (cosines −0.53, −0.15, −0.43), with no demographic tilt of the type shares.
        unseen_fraction: share of annotators held out as unseen users.
        test_pairs_per_user: each user's last pairs kept for testing.
        curve: numbers of adaptation pairs per unseen user (the sample-efficiency curve).
        pal: :class:`PALConfig` fields (``n_prototypes`` defaults to the number of types).
        bt: :class:`BradleyTerryConfig` fields, shared by the homogeneous baseline and the oracle.
        homogeneous_control: also run the population's homogeneous control.
        compare_adapt_methods: also measure unseen@20 under other adaptation recipes (the
            authors' AdamW lr 5e-3 / batch 4 / 20 epochs without prior, and full-batch Adam).
        seed: seed of the annotator split.
        output_dir: run folder of :func:`main` (config.yaml, metrics.json,
            sample_efficiency.png, report.html).
        cache_dir: embedding cache folder.
        threads: torch CPU threads (default: torch's choice).
        progress: show progress bars.
    """

    population: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_POPULATION))
    unseen_fraction: float = 0.25
    test_pairs_per_user: int = 50
    curve: list[int] = field(default_factory=lambda: list(CURVE))
    pal: dict[str, Any] = field(default_factory=dict)
    bt: dict[str, Any] = field(default_factory=dict)
    homogeneous_control: bool = True
    compare_adapt_methods: bool = True
    seed: int = 0
    output_dir: str = "runs/pal_benchmark"
    cache_dir: str = str(DEFAULT_CACHE_DIR)
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(self, {
            "seed": INDEX, "test_pairs_per_user": COUNT,
            "unseen_fraction": OPEN_UNIT,
            **({"threads": COUNT} if self.threads is not None else {}),
        })

    def population_config(self) -> PopulationConfig:
        return config_from_dict(PopulationConfig, self.population, where="benchmark population")

    def pal_config(self, n_types: int, show_progress: bool) -> PALConfig:
        values = {"n_prototypes": n_types, "show_progress": show_progress, **self.pal}
        return config_from_dict(PALConfig, values, where="benchmark pal")

    def bt_config(self, show_progress: bool) -> BradleyTerryConfig:
        values = {"show_progress": show_progress, **self.bt}
        return config_from_dict(BradleyTerryConfig, values, where="benchmark bt")

    def check(self, pairs_per_annotator: int) -> None:
        """Refuse a population too small for the curve."""
        need = max(self.curve) + self.test_pairs_per_user
        if pairs_per_annotator < need:
            raise ConfigError(f"pairs_per_annotator={pairs_per_annotator} is too small: the "
                              f"curve needs {max(self.curve)} adaptation + "
                              f"{self.test_pairs_per_user} test pairs per user ({need})")
        if HEADLINE_N not in self.curve:
            raise ConfigError(f"the curve must contain {HEADLINE_N} (the headline metric)")


@dataclass
class _Split:
    """Row indices of one population's benchmark split."""

    seen_train: np.ndarray
    seen_test: np.ndarray
    unseen_pool: np.ndarray
    unseen_test: np.ndarray
    unseen_position: np.ndarray  # position of each unseen_pool row within its user's pairs


def _split(pop: Population, config: BenchmarkConfig) -> _Split:
    ds = pop.dataset
    held_out = set(split_by_annotator(ds, config.unseen_fraction, config.seed)["test"]
                   ["annotator_id"])
    users = pd.Series(ds["annotator_id"])
    position = users.groupby(users).cumcount().to_numpy()
    count = users.map(users.value_counts()).to_numpy()
    is_test = position >= count - config.test_pairs_per_user
    unseen = users.isin(held_out).to_numpy()
    pool = np.flatnonzero(unseen & ~is_test)
    return _Split(seen_train=np.flatnonzero(~unseen & ~is_test),
                  seen_test=np.flatnonzero(~unseen & is_test), unseen_pool=pool,
                  unseen_test=np.flatnonzero(unseen & is_test), unseen_position=position[pool])


def _oracle_accuracy(models: Mapping[str, BradleyTerryRewardModel], types: np.ndarray,
                     pairs: PairEmbeddings, rows: np.ndarray) -> float:
    margins = []
    with torch.no_grad():
        for group, model in models.items():
            mine = rows[types[rows] == int(group)]
            margins.append(model.margins(pairs.subset(mine)))
    return pairwise_accuracy(torch.cat(margins))


def _ari(model: PALRewardModel, pop: Population, users: list[str]) -> float:
    groups = model.user_groups()
    index = pop.truth.annotator_index()
    return adjusted_rand_index([int(pop.truth.annotator_type[index[u]]) for u in users],
                               [groups[u] for u in users])


def _evaluate(pop: Population, config: BenchmarkConfig, encoder: ItemEncoder,
              show_progress: bool) -> dict[str, Any]:
    """Train PAL / BT / oracle on one population and measure everything; returns a metrics dict."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    ds = pop.dataset
    pairs = embed_pairs(ds, encoder)
    timings["embed"] = time.perf_counter() - clock
    split = _split(pop, config)
    seen_train, seen_test = ds.select(split.seen_train), ds.select(split.seen_test)
    unseen_test = ds.select(split.unseen_test)
    heterogeneous = pop.truth.n_types > 1
    out: dict[str, Any] = {"n_pairs": {"seen_train": len(split.seen_train),
                                       "seen_test": len(split.seen_test),
                                       "unseen_pool": len(split.unseen_pool),
                                       "unseen_test": len(split.unseen_test)}}

    clock = time.perf_counter()
    pal = PALRewardModel(encoder.dim, config.pal_config(pop.config.n_types, show_progress), encoder)
    pal.fit(seen_train, pairs.subset(split.seen_train))
    timings["pal_fit"] = time.perf_counter() - clock
    clock = time.perf_counter()
    bt = BradleyTerryRewardModel(encoder.dim, config.bt_config(show_progress), encoder)
    bt.fit(pairs.subset(split.seen_train))
    timings["bt_fit"] = time.perf_counter() - clock
    bt_unseen = bt.accuracy(pairs.subset(split.unseen_test))
    out["seen_accuracy"] = {"pal": pal.accuracy(seen_test, pairs.subset(split.seen_test)),
                            "bt": bt.accuracy(pairs.subset(split.seen_test))}

    types = np.asarray(ds["type_id"])
    oracle_unseen = None
    if heterogeneous:
        clock = time.perf_counter()
        oracle = train_per_group(seen_train, encoder, "type_id", config.bt_config(show_progress),
                                 pairs=pairs.subset(split.seen_train))
        timings["oracle_fit"] = time.perf_counter() - clock
        out["seen_accuracy"]["oracle"] = _oracle_accuracy(oracle, types, pairs, split.seen_test)
        oracle_unseen = _oracle_accuracy(oracle, types, pairs, split.unseen_test)
        seen_users = list(dict.fromkeys(seen_train["annotator_id"]))
        out["adjusted_rand_index"] = _ari(pal, pop, seen_users)

    clock = time.perf_counter()
    curve = []
    unseen_users = list(dict.fromkeys(unseen_test["annotator_id"]))
    for n in config.curve:
        rows = split.unseen_pool[split.unseen_position < n]
        adapted = pal.clone()
        adapted.adapt(ds.select(rows), pairs=pairs.subset(rows))
        curve.append(adapted.accuracy(unseen_test, pairs.subset(split.unseen_test)))
        if n == HEADLINE_N and heterogeneous:
            out["adjusted_rand_index_unseen_at_20"] = _ari(adapted, pop, unseen_users)
    timings["adapt_curve"] = time.perf_counter() - clock
    at20 = curve[config.curve.index(HEADLINE_N)]
    out["unseen_accuracy_at_20"] = {"pal": at20, "bt": bt_unseen}
    out["sample_efficiency"] = {"n_pairs": list(config.curve), "pal": curve, "bt": bt_unseen}
    if config.compare_adapt_methods:
        out["adapt_methods_at_20"] = _adapt_methods(pal, ds, pairs, split, unseen_test)
    out["population_average_fallback_accuracy"] = pal.accuracy(
        unseen_test, pairs.subset(split.unseen_test), unknown="average")
    if heterogeneous:
        out["unseen_accuracy_at_20"]["oracle"] = oracle_unseen
        out["sample_efficiency"]["oracle"] = oracle_unseen
        clock = time.perf_counter()
        out["relabel"] = _relabel(pop, ds.select(split.unseen_test), oracle)
        timings["relabel"] = time.perf_counter() - clock
    n_users = len(pop.truth.annotator_ids)
    bt_params = sum(p.numel() for p in bt.parameters())
    out["parameter_counts"] = {
        "pal": pal.parameter_counts(), "bt": bt_params,
        "oracle": bt_params * pop.config.n_types,
        "per_user_bt": {"users": n_users, "total": bt_params * n_users},
        "per_user_over_pal": bt_params * n_users / pal.parameter_counts()["total"],
    }
    out["timings_s"] = timings
    return out


def _adapt_methods(pal: PALRewardModel, ds: Any, pairs: PairEmbeddings, split: _Split,
                   unseen_test: Any) -> dict[str, float]:
    """Unseen@20 under the authors' adaptation recipe and the alternatives (measured, not
    assumed)."""
    recipes = {
        "authors_adamw_lr5e-3_bs4_20ep": {"adapt_lr": 5e-3, "adapt_batch_size": 4,
                                          "adapt_epochs": 20, "adapt_prior": "none"},
        "adamw_lr5e-2_bs4_20ep_no_prior": {"adapt_lr": 5e-2, "adapt_batch_size": 4,
                                           "adapt_epochs": 20, "adapt_prior": "none"},
        "fullbatch_adamw_lr1e-1_100ep": {"adapt_lr": 1e-1, "adapt_batch_size": 0,
                                         "adapt_epochs": 100},
    }
    rows = split.unseen_pool[split.unseen_position < HEADLINE_N]
    result = {}
    for name, recipe in recipes.items():
        adapted = pal.clone(dataclasses.replace(pal.config, **recipe))
        adapted.adapt(ds.select(rows), pairs=pairs.subset(rows))
        result[name] = adapted.accuracy(unseen_test, pairs.subset(split.unseen_test))
    return result


def _relabel(pop: Population, anonymous: Any,
             models: Mapping[str, BradleyTerryRewardModel]) -> dict[str, Any]:
    """Agreement of labels with the true average reward before/after per-type-average relabeling."""
    probs = {str(t): float(p) for t, p in enumerate(pop.truth.type_probs)}
    relabeled = relabel_with_average_reward(anonymous, models, probs)
    avg = pop.truth.average_reward()

    def agreement(d: Any) -> float:
        chosen, rejected = np.asarray(d["chosen_id"]), np.asarray(d["rejected_id"])
        return pairwise_accuracy(avg[chosen] - avg[rejected])

    return {"agreement_original": agreement(anonymous),
            "agreement_relabeled": agreement(relabeled),
            "swapped": int(sum(relabeled["relabeled"])), "pairs": len(relabeled),
            "type_probs": probs}


def _plot(metrics: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("heterogeneous", metrics["heterogeneous"])]
    if "homogeneous" in metrics:
        panels.append(("homogeneous control", metrics["homogeneous"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, m) in zip(axes[0], panels, strict=True):
        eff = m["sample_efficiency"]
        ax.plot(eff["n_pairs"], eff["pal"], "o-", label="PAL (adapted mixture)")
        ax.axhline(eff["bt"], color="gray", ls="--", label="homogeneous Bradley-Terry")
        if "oracle" in eff:
            ax.axhline(eff["oracle"], color="green", ls=":", label="per-type oracle")
        ax.set_xscale("log")
        ax.set_ylim(0.45, 1.0)  # same scale in both panels: noise should look like noise
        ax.set_xlabel("comparisons per unseen user")
        ax.set_ylabel("unseen-user pairwise accuracy")
        ax.set_title(title)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def run_benchmark(config: BenchmarkConfig | None = None, out_dir: str | Path | None = None,
                  encoder: ItemEncoder | None = None, cache_dir: str | Path | None = None,
                  show_progress: bool = True) -> dict[str, Any]:
    """Run the synthetic PAL benchmark; when ``out_dir`` is given write ``config.yaml``,
    ``sample_efficiency.png``, ``metrics.json`` and ``report.html`` there. Returns the metrics.

    Headline keys: ``unseen_accuracy_at_20`` = {pal, bt, oracle}, ``homogeneous_accuracy`` = {pal,
    bt} (unseen@20 on the homogeneous control), ``adjusted_rand_index`` (seen users' dominant
    prototypes vs true types), ``sample_efficiency`` and ``parameter_counts``; details per
    population under ``heterogeneous`` / ``homogeneous``.
    """
    config = config or BenchmarkConfig()
    start = time.perf_counter()
    pop_config = config.population_config()
    config.check(pop_config.pairs_per_annotator)
    encoder = encoder or MiniLMEncoder(cache_dir=cache_dir, show_progress=show_progress)
    pop = make_population(pop_config)
    weights = pop.truth.type_weights
    unit = weights / np.linalg.norm(weights, axis=1, keepdims=True)
    metrics: dict[str, Any] = {
        "population": {"n_types": pop.truth.n_types, "type_probs": pop.truth.type_probs.tolist(),
                       "type_cosines": (unit @ unit.T).round(4).tolist(),
                       "n_pairs": len(pop.dataset), "n_users": len(pop.truth.annotator_ids)},
        "encoder": encoder.model_id,
        "heterogeneous": _evaluate(pop, config, encoder, show_progress),
    }
    het = metrics["heterogeneous"]
    metrics.update({k: het[k] for k in ("unseen_accuracy_at_20", "adjusted_rand_index",
                                        "sample_efficiency", "parameter_counts", "relabel")})
    if config.homogeneous_control:
        control = make_population(pop_config.homogeneous_control())
        metrics["homogeneous"] = _evaluate(control, config, encoder, show_progress)
        metrics["homogeneous_accuracy"] = metrics["homogeneous"]["unseen_accuracy_at_20"]
    metrics["wall_time_s"] = time.perf_counter() - start
    if out_dir is not None:
        write_config(out_dir, config)
        _plot(metrics, Path(out_dir) / "sample_efficiency.png")
        write_report(out_dir, benchmark_report(metrics))
    return metrics


def main(config: BenchmarkConfig) -> dict[str, Any]:
    """Run the benchmark into ``config.output_dir`` and print its headline numbers."""
    if config.threads is not None:
        torch.set_num_threads(check_number(config.threads, "BenchmarkConfig.threads", **COUNT))
    m = run_benchmark(config, out_dir=config.output_dir, cache_dir=config.cache_dir,
                      show_progress=config.progress)
    u, h = m["unseen_accuracy_at_20"], m.get("homogeneous_accuracy")
    print(f"unseen users @20 pairs: PAL {u['pal']:.3f}  BT {u['bt']:.3f}  oracle {u['oracle']:.3f}")
    print(f"adjusted Rand index (dominant prototype vs true type): "
          f"{m['adjusted_rand_index']:.3f}")
    if h is not None:
        print(f"homogeneous control @20: PAL {h['pal']:.3f}  BT {h['bt']:.3f}")
    r = m["relabel"]
    print(f"relabeling: agreement with the true average reward {r['agreement_original']:.3f} -> "
          f"{r['agreement_relabeled']:.3f} ({r['swapped']} of {r['pairs']} pairs swapped)")
    print(f"wrote {Path(config.output_dir) / 'report.html'} in {m['wall_time_s']:.0f} s")
    return m


def benchmark_report(m: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` plus what :func:`~pluralign.runs.render_html` shows."""
    u, h, r = m["unseen_accuracy_at_20"], m.get("homogeneous_accuracy"), m["relabel"]
    summary = [
        f"Unseen users with 20 pairs each: PAL {u['pal']:.3f}, homogeneous Bradley–Terry "
        f"{u['bt']:.3f}, per-type oracle {u['oracle']:.3f}.",
        f"Adjusted Rand index of dominant prototypes vs true types: "
        f"{m['adjusted_rand_index']:.3f}.",
        f"Relabeling with averaged per-type rewards: agreement with the true average reward "
        f"{r['agreement_original']:.3f} -> {r['agreement_relabeled']:.3f}.",
    ]
    if h is not None:
        summary.append(f"Homogeneous control, unseen users @20: PAL {h['pal']:.3f}, "
                       f"Bradley–Terry {h['bt']:.3f}.")
    curve = m["sample_efficiency"]
    table = {"title": "Unseen-user accuracy by number of pairs per new user",
             "columns": ["model", *map(str, curve["n_pairs"])],
             "rows": [["PAL (adapted)", *(f"{a:.3f}" for a in curve["pal"])],
                      *([name, *[f"{curve[name]:.3f}"] * len(curve["n_pairs"])]
                        for name in ("bt", "oracle") if name in curve)]}
    return {**m, "title": "PAL benchmark on a synthetic population", "summary": summary,
            "tables": [table],
            "figures": [{"file": "sample_efficiency.png",
                         "caption": "Few-shot adaptation of unseen users ([PAL])"}]}

