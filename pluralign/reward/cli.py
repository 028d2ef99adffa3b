"""``pluralign pal train | eval | adapt | benchmark``: pluralistic reward models.

* ``train``: fit a PAL (or homogeneous Bradley–Terry) reward model on frozen MiniLM embeddings of
  any preference source :func:`~pluralign.data.load_preferences` reads; writes the model,
  ``config.yaml``, ``metrics.json`` (train / held-out pairwise accuracy) and ``loss.png``.
* ``eval``: pairwise accuracy of a saved model on a dataset (PAL: each pair scored for its
  annotator).
* ``adapt``: few-shot fit of new users' mixture weights (everything else frozen); saves the model.
* ``benchmark``: the synthetic benchmark of :mod:`pluralign.reward.benchmark`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from pluralign.errors import ConfigError
from pluralign.evaluation.report import write_report
from pluralign.io import (
    atomic_path,
    parse_key_values,
    read_yaml_mapping,
    write_json,
    write_text,
)

_EPILOG = """Examples:
  pluralign pal benchmark --out runs/pal-bench
  pluralign pal benchmark --out runs/pal-bench --config configs/pal_benchmark.yaml --threads 2
  pluralign data synthetic runs/pop --set n_annotators=300 --set pairs_per_annotator=50
  pluralign pal train --data runs/pop/pairs.parquet --out runs/pal --set n_prototypes=3
  pluralign pal train --data pairs.parquet --out runs/pal --config configs/pal_train.yaml
  pluralign pal train --data pairs.jsonl --kind bt --out runs/bt
  pluralign pal eval --model runs/pal --data heldout.jsonl --unknown average
  pluralign pal adapt --model runs/pal --data new_users.jsonl --n 20 --out runs/pal-adapted
"""
DEFAULT_CACHE = Path(".cache") / "pluralign" / "embeddings"


def _read_yaml(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    return read_yaml_mapping(path, "fields")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE),
                        help="embedding cache folder (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="preference source (file, folder, HF id)")
    parser.add_argument("--format", default=None, help="source format (detected when omitted)")


def add_pal_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pluralign pal`` (subcommands train, eval, adapt, benchmark)."""
    parser.epilog = _EPILOG
    sub = parser.add_subparsers(dest="pal_command", metavar="ACTION")
    fmt = argparse.RawDescriptionHelpFormatter

    train = sub.add_parser("train", help="train a PAL or Bradley-Terry reward model",
                           epilog=_EPILOG, formatter_class=fmt)
    _data_args(train)
    train.add_argument("--out", required=True, help="run folder for the model and metrics")
    train.add_argument("--kind", choices=("pal", "bt"), default="pal",
                       help="PAL mixture model or homogeneous Bradley-Terry (default: pal)")
    train.add_argument("--config", help="YAML with PALConfig / BradleyTerryConfig fields")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one config field (repeatable)")
    train.add_argument("--eval-fraction", type=float, default=0.1,
                       help="share of pairs held out for accuracy (default: %(default)s)")
    _common(train)

    evaluate = sub.add_parser("eval", help="pairwise accuracy of a saved model",
                              epilog=_EPILOG, formatter_class=fmt)
    _data_args(evaluate)
    evaluate.add_argument("--model", required=True, help="folder written by `pal train`")
    evaluate.add_argument("--unknown", choices=("error", "average"), default="error",
                          help="PAL: unknown annotators raise (error) or get the population-"
                               "average mixture (average)")
    evaluate.add_argument("--out", help="write metrics.json here")
    _common(evaluate)

    adapt = sub.add_parser("adapt", help="fit new users' mixture weights (few-shot)",
                           epilog=_EPILOG, formatter_class=fmt)
    _data_args(adapt)
    adapt.add_argument("--model", required=True, help="PAL folder written by `pal train`")
    adapt.add_argument("--n", type=int, default=None, help="pairs per new user (default: all)")
    adapt.add_argument("--out", required=True, help="folder for the adapted model")
    _common(adapt)

    bench = sub.add_parser("benchmark", help="synthetic benchmark: PAL vs BT vs per-type oracle",
                           epilog=_EPILOG, formatter_class=fmt)
    bench.add_argument("--out", required=True, help="folder for metrics.json and plots")
    bench.add_argument("--config", help="YAML with BenchmarkConfig fields")
    _common(bench)


def _setup(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def _load(args: argparse.Namespace) -> Any:
    from pluralign.data import load_preferences

    return load_preferences(args.data, format=args.format)


def _load_model(folder: str, cache_dir: str) -> Any:
    from pluralign.reward.base import CONFIG_NAME, CheckpointError
    from pluralign.reward.bradley_terry import BradleyTerryRewardModel
    from pluralign.reward.pal import PALRewardModel

    meta_file = Path(folder) / CONFIG_NAME
    if not meta_file.is_file():
        raise CheckpointError(f"{folder} is not a saved reward model (no {CONFIG_NAME})")
    kind = json.loads(meta_file.read_text(encoding="utf-8")).get("class")
    cls = {m.kind: m for m in (PALRewardModel, BradleyTerryRewardModel)}.get(kind)
    if cls is None:
        raise CheckpointError(f"{folder}: unknown model class {kind!r}")
    return cls.from_pretrained(folder, cache_dir=cache_dir)


def _plot_loss(history: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(1, len(history) + 1), history, "o-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def _train(args: argparse.Namespace) -> int:
    from pluralign.data.splits import train_test_split_pairs
    from pluralign.reward.base import config_from_dict
    from pluralign.reward.bradley_terry import BradleyTerryConfig, BradleyTerryRewardModel
    from pluralign.reward.encoders import MiniLMEncoder, embed_pairs
    from pluralign.reward.pal import PALConfig, PALRewardModel

    values = {**_read_yaml(args.config), **parse_key_values(args.set, "--set"),
              "show_progress": not args.quiet}
    encoder = MiniLMEncoder(cache_dir=args.cache_dir, show_progress=not args.quiet)
    split = train_test_split_pairs(_load(args), test_size=args.eval_fraction, seed=0)
    train_pairs = embed_pairs(split["train"], encoder)
    test_pairs = embed_pairs(split["test"], encoder)
    model: Any
    if args.kind == "pal":
        model = PALRewardModel(encoder.dim, config_from_dict(PALConfig, values, "pal config"),
                               encoder)
        history = model.fit(split["train"], train_pairs)
        metrics = {"train_accuracy": model.accuracy(split["train"], train_pairs),
                   "heldout_accuracy": model.accuracy(split["test"], test_pairs,
                                                      unknown="average"),
                   "parameter_counts": model.parameter_counts()}
    else:
        model = BradleyTerryRewardModel(
            encoder.dim, config_from_dict(BradleyTerryConfig, values, "bt config"), encoder)
        history = model.fit(train_pairs)
        metrics = {"train_accuracy": model.accuracy(train_pairs),
                   "heldout_accuracy": model.accuracy(test_pairs),
                   "parameter_counts": sum(p.numel() for p in model.parameters())}
    metrics["loss_history"] = history
    out = Path(args.out)
    model.save_pretrained(out)
    write_text(out / "config.yaml", yaml.safe_dump(
        {"kind": args.kind, "data": str(args.data), "format": args.format,
         "eval_fraction": args.eval_fraction, "model": dataclasses.asdict(model.config)},
        sort_keys=False))
    _plot_loss(history, out / "loss.png")
    write_json(out / "metrics.json", metrics)
    print(f"train accuracy {metrics['train_accuracy']:.3f}, held-out pairs "
          f"{metrics['heldout_accuracy']:.3f}; model in {out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pluralign.reward.pal import PALRewardModel

    model = _load_model(args.model, args.cache_dir)
    data = _load(args)
    if isinstance(model, PALRewardModel):
        accuracy = model.accuracy(data, unknown=args.unknown)
    else:
        accuracy = model.accuracy(data)
    metrics = {"accuracy": accuracy, "pairs": len(data), "model": str(args.model),
               "data": str(args.data)}
    if args.out:
        write_json(Path(args.out) / "metrics.json", metrics)
    print(f"pairwise accuracy {accuracy:.4f} on {len(data)} pairs")
    return 0


def _adapt(args: argparse.Namespace) -> int:
    from pluralign.reward.pal import PALRewardModel

    model = _load_model(args.model, args.cache_dir)
    if not isinstance(model, PALRewardModel):
        raise ConfigError(f"{args.model} is not a PAL model; only PAL adapts to new users")
    users = model.adapt(_load(args), n=args.n)
    model.save_pretrained(args.out)
    groups = model.user_groups()
    write_json(Path(args.out) / "adapted_users.json", {u: groups[u] for u in users})
    print(f"adapted {len(users)} new user(s); dominant prototypes in "
          f"{Path(args.out) / 'adapted_users.json'}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from pluralign.reward.base import config_from_dict
    from pluralign.reward.benchmark import BenchmarkConfig, run_benchmark

    config = config_from_dict(BenchmarkConfig, _read_yaml(args.config), where="benchmark config")
    m = run_benchmark(config, out_dir=args.out, cache_dir=args.cache_dir,
                      show_progress=not args.quiet)
    u, h = m["unseen_accuracy_at_20"], m.get("homogeneous_accuracy")
    print(f"unseen users @20 pairs: PAL {u['pal']:.3f}  BT {u['bt']:.3f}  oracle {u['oracle']:.3f}")
    print(f"adjusted Rand index (dominant prototype vs true type): "
          f"{m['adjusted_rand_index']:.3f}")
    if h is not None:
        print(f"homogeneous control @20: PAL {h['pal']:.3f}  BT {h['bt']:.3f}")
    r = m["relabel"]
    print(f"relabeling: agreement with the true average reward {r['agreement_original']:.3f} -> "
          f"{r['agreement_relabeled']:.3f} ({r['swapped']} of {r['pairs']} pairs swapped)")
    if args.out is not None:
        write_report(args.out, _benchmark_report(m))
        print(f"wrote {Path(args.out) / 'report.html'} in {m['wall_time_s']:.0f} s")
    return 0


def _benchmark_report(m: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` plus what :func:`~pluralign.evaluation.report.render_html` shows."""
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
                         "caption": "Few-shot adaptation of unseen users (seeds/002)"}]}


def run_pal(args: argparse.Namespace) -> int:
    """Dispatch ``pluralign pal ACTION``."""
    actions = {"train": _train, "eval": _eval, "adapt": _adapt, "benchmark": _benchmark}
    if getattr(args, "pal_command", None) not in actions:
        raise ConfigError("choose an action: pluralign pal train|eval|adapt|benchmark "
                          "(see pluralign pal --help)")
    _setup(args)
    return actions[args.pal_command](args)
