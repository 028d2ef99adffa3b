"""``pluralign pal train | eval | adapt``: pluralistic reward models.

* ``train``: fit a PAL (or homogeneous Bradley–Terry) reward model on frozen MiniLM embeddings of
  any preference source :func:`~pluralign.data.load_preferences` reads; writes the model,
  ``config.yaml``, ``metrics.json`` (train / held-out pairwise accuracy) and ``loss.png``.
* ``eval``: pairwise accuracy of a saved model on a dataset (PAL: each pair scored for its
  annotator).
* ``adapt``: few-shot fit of new users' mixture weights (everything else frozen); saves the model.

The synthetic PAL benchmark is an experiment: ``pluralign experiment pal_benchmark``
(:mod:`pluralign.experiments.pal_benchmark`). Every action records its config as ``config.yaml``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pluralign.config import apply_overrides, describe_fields
from pluralign.errors import ConfigError
from pluralign.io import atomic_path, read_yaml_mapping, write_json
from pluralign.reward.encoders import DEFAULT_CACHE_DIR
from pluralign.runs import write_config, write_metrics
from pluralign.validation import COUNT, check_number

_EPILOG = """Examples:
  pluralign data synthetic n_annotators=300 pairs_per_annotator=50 --output-dir runs/pop
  pluralign pal train --data runs/pop/pairs.parquet n_prototypes=3 --output-dir runs/pal
  pluralign pal train --data pairs.parquet --config configs/pal_train.yaml --output-dir runs/pal
  pluralign pal train --data pairs.jsonl --kind bt --output-dir runs/bt
  pluralign pal eval --model runs/pal --data heldout.jsonl --unknown average --output-dir runs/e
  pluralign pal adapt --model runs/pal --data new_users.jsonl --n 20 --output-dir runs/adapted
  pluralign experiment pal_benchmark --config configs/pal_benchmark.yaml --output-dir runs/bench
"""


def _read_yaml(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    return read_yaml_mapping(path, "fields")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR),
                        help="embedding cache folder (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _data_args(parser: argparse.ArgumentParser, loader_options: bool = False) -> None:
    """--data SOURCE and its format; with ``loader_options`` (commands whose --config is not a
    model config) also --config and key=value for the loader's options."""
    parser.add_argument("--data", required=True, help="preference source (file, folder, HF id)")
    parser.add_argument("--format", default=None, help="source format (detected when omitted)")
    if loader_options:
        parser.add_argument("--config", dest="loader_config", metavar="FILE",
                            help="YAML mapping of loader options for --data")
        parser.add_argument("loader_overrides", nargs="*", default=[], metavar="key=value",
                            help="loader option for --data, e.g. pairs=by_score")


def add_pal_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``pluralign pal`` (subcommands train, eval, adapt)."""
    parser.epilog = _EPILOG
    sub = parser.add_subparsers(dest="pal_command", metavar="ACTION")
    fmt = argparse.RawDescriptionHelpFormatter

    from pluralign.reward.bradley_terry import BradleyTerryConfig
    from pluralign.reward.pal import PALConfig

    fields = "".join(f"\n{cls.__name__} fields (--kind {kind}; key=value or --config):\n"
                     + "\n".join(describe_fields(cls))
                     for kind, cls in (("pal", PALConfig), ("bt", BradleyTerryConfig)))
    train = sub.add_parser("train", help="train a PAL or Bradley-Terry reward model",
                           epilog=_EPILOG + fields, formatter_class=fmt)
    _data_args(train)
    train.add_argument("--output-dir", required=True,
                       help="run folder for the model and metrics")
    train.add_argument("--kind", choices=("pal", "bt"), default="pal",
                       help="PAL mixture model or homogeneous Bradley-Terry (default: pal)")
    train.add_argument("--config", help="YAML with PALConfig / BradleyTerryConfig fields")
    train.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                       help="override a PALConfig / BradleyTerryConfig field (YAML values)")
    train.add_argument("--eval-fraction", type=float, default=0.1,
                       help="share of pairs held out for accuracy (default: %(default)s)")
    _common(train)

    evaluate = sub.add_parser("eval", help="pairwise accuracy of a saved model",
                              epilog=_EPILOG, formatter_class=fmt)
    _data_args(evaluate, loader_options=True)
    evaluate.add_argument("--model", required=True, help="folder written by `pal train`")
    evaluate.add_argument("--unknown", choices=("error", "average"), default="error",
                          help="PAL: unknown annotators raise (error) or get the population-"
                               "average mixture (average)")
    evaluate.add_argument("--output-dir", help="write config.yaml and metrics.json here")
    _common(evaluate)

    adapt = sub.add_parser("adapt", help="fit new users' mixture weights (few-shot)",
                           epilog=_EPILOG, formatter_class=fmt)
    _data_args(adapt, loader_options=True)
    adapt.add_argument("--model", required=True, help="PAL folder written by `pal train`")
    adapt.add_argument("--n", type=int, default=None, help="pairs per new user (default: all)")
    adapt.add_argument("--output-dir", required=True, help="folder for the adapted model")
    _common(adapt)


def _setup(args: argparse.Namespace) -> None:
    if args.threads is not None:
        import torch

        torch.set_num_threads(check_number(args.threads, "--threads", **COUNT))


def _load(args: argparse.Namespace) -> Any:
    from pluralign.data import load_preferences

    options = apply_overrides(_read_yaml(getattr(args, "loader_config", None)),
                              getattr(args, "loader_overrides", None))
    return load_preferences(args.data, format=args.format, **options)


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
    from pluralign.config import config_from_dict
    from pluralign.data.splits import train_test_split_pairs
    from pluralign.reward.bradley_terry import BradleyTerryConfig, BradleyTerryRewardModel
    from pluralign.reward.encoders import MiniLMEncoder, embed_pairs
    from pluralign.reward.pal import PALConfig, PALRewardModel

    values = {**apply_overrides(_read_yaml(args.config), args.overrides),
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
    out = Path(args.output_dir)
    model.save_pretrained(out)
    write_config(out, {"kind": args.kind, "data": str(args.data), "format": args.format,
                       "eval_fraction": args.eval_fraction, "model": model.config})
    _plot_loss(history, out / "loss.png")
    write_metrics(out, metrics)
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
    if args.output_dir:
        write_config(args.output_dir, {"model": str(args.model), "data": str(args.data),
                                       "format": args.format, "unknown": args.unknown})
        write_metrics(args.output_dir, metrics)
    print(f"pairwise accuracy {accuracy:.4f} on {len(data)} pairs")
    return 0


def _adapt(args: argparse.Namespace) -> int:
    from pluralign.reward.pal import PALRewardModel

    model = _load_model(args.model, args.cache_dir)
    if not isinstance(model, PALRewardModel):
        raise ConfigError(f"{args.model} is not a PAL model; only PAL adapts to new users")
    users = model.adapt(_load(args), n=args.n)
    model.save_pretrained(args.output_dir)
    write_config(args.output_dir, {"model": str(args.model), "data": str(args.data),
                                   "format": args.format, "n": args.n})
    groups = model.user_groups()
    write_json(Path(args.output_dir) / "adapted_users.json", {u: groups[u] for u in users})
    print(f"adapted {len(users)} new user(s); dominant prototypes in "
          f"{Path(args.output_dir) / 'adapted_users.json'}")
    return 0


def run_pal(args: argparse.Namespace) -> int:
    """Dispatch ``pluralign pal ACTION``."""
    actions = {"train": _train, "eval": _eval, "adapt": _adapt}
    if getattr(args, "pal_command", None) not in actions:
        raise ConfigError("choose an action: pluralign pal train|eval|adapt "
                          "(see pluralign pal --help)")
    _setup(args)
    return actions[args.pal_command](args)
