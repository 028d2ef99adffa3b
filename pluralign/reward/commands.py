"""The configs and runs of ``pluralign pal train | eval | adapt``.

* ``train``: fit a PAL (``kind: pal``, section ``pal:``) or homogeneous Bradley–Terry (``kind:
  bt``, section ``bt:``; the same sections as ``pluralign experiment pal_benchmark``) reward
  model on frozen MiniLM embeddings of the ``data:`` section, holding out ``data.test_size`` of
  the pairs (default 0.1) for accuracy; writes the model (``model.safetensors`` and its own
  ``config.json``), ``config.yaml`` (the command's config), ``metrics.json`` and ``loss.png``.
* ``eval``: pairwise accuracy of a saved model (``model=RUN``) on a dataset (PAL: each pair scored
  for its annotator).
* ``adapt``: few-shot fit of new users' mixture weights (everything else frozen); saves the model.

Every command's ``config.yaml`` is its whole config, so ``--config RUN/config.yaml`` reruns it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pluralign.data.config import DataConfig, load_data, require_data
from pluralign.errors import ConfigError
from pluralign.io import atomic_path, check_output_dir, write_json
from pluralign.reward.bradley_terry import BradleyTerryConfig
from pluralign.reward.encoders import DEFAULT_CACHE_DIR
from pluralign.reward.pal import UNKNOWN_POLICIES, PALConfig
from pluralign.runs import RunFolderOptions, write_config, write_metrics
from pluralign.validation import COUNT, check_fields

KINDS = ("pal", "bt")


@dataclass
class HeldOutDataConfig(DataConfig):
    """The ``data:`` section of ``pal train``: 10% of the pairs held out by default.

    Attributes:
        test_size: share of the pairs held out for the held-out accuracy (0 = none).
    """

    test_size: float = 0.1


@dataclass
class _RewardCommand(RunFolderOptions):
    """Fields every ``pal`` command has.

    Attributes:
        data: the preference pairs, read whole (``data=PATH`` is short for data.source=PATH).
        cache_dir: embedding cache folder.
        threads: torch CPU threads (default: torch's choice).
        progress: progress bars (embedding, and training unless the model section's
            show_progress is false).
    """

    data: DataConfig | None = None
    cache_dir: str = str(DEFAULT_CACHE_DIR)
    threads: int | None = None
    progress: bool = True

    def _check(self, command: str, output_required: bool) -> None:
        if self.threads is not None:
            check_fields(self, {"threads": COUNT})
        output_dir = getattr(self, "output_dir", None)
        if output_dir is not None:
            check_output_dir(output_dir, "output_dir")
        elif output_required:
            raise ConfigError(f"{command} needs --output-dir DIR (the folder to write)")

    def set_threads(self) -> None:
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)


def _require_model(model: str | None, command: str) -> None:
    if model is None:
        raise ConfigError(f"model is missing: {command} needs the folder `pal train` wrote, e.g. "
                          "model=runs/pal")


@dataclass
class PalTrainConfig(_RewardCommand):
    """``pluralign pal train``: fit a PAL or Bradley–Terry reward model.

    Attributes:
        data: the preference pairs (``data=PATH`` is short for data.source=PATH); PAL needs an
            annotator_id on every pair; data.test_size of them are held out for accuracy.
        kind: 'pal' (the PAL mixture model, section pal) or 'bt' (homogeneous Bradley–Terry,
            section bt).
        pal: PALConfig fields (kind: pal).
        bt: BradleyTerryConfig fields (kind: bt).
        output_dir: run folder for the model, config.yaml, metrics.json and loss.png.
    """

    data: HeldOutDataConfig | None = None
    kind: str = "pal"
    pal: PALConfig | None = None
    bt: BradleyTerryConfig | None = None
    output_dir: str | None = None

    def __post_init__(self) -> None:
        require_data(self.data, "pal train", whole=False)
        if self.kind not in KINDS:
            raise ConfigError(f"kind={self.kind!r} is unknown; use one of {KINDS}")
        other = "bt" if self.kind == "pal" else "pal"
        if getattr(self, other) is not None:
            raise ConfigError(f"{other}: is only read with kind: {other} (kind is "
                              f"{self.kind!r}); remove it or set kind={other}")
        if self.kind == "pal" and self.pal is None:
            self.pal = PALConfig()
        if self.kind == "bt" and self.bt is None:
            self.bt = BradleyTerryConfig()
        self._check("pal train", output_required=True)

    def model_config(self) -> PALConfig | BradleyTerryConfig:
        """The chosen model's config, its progress bar off when ``progress`` is."""
        config = self.pal if self.kind == "pal" else self.bt
        return dataclasses.replace(config, show_progress=config.show_progress and self.progress)


@dataclass
class PalEvalConfig(_RewardCommand):
    """``pluralign pal eval``: pairwise accuracy of a saved reward model.

    Attributes:
        model: folder written by `pal train` (or `pal adapt`).
        unknown: PAL: annotators the model has not seen raise ('error') or get the
            population-average mixture ('average').
        output_dir: also write config.yaml and metrics.json here (optional).
    """

    model: str | None = None
    unknown: str = "error"
    output_dir: str | None = None

    def __post_init__(self) -> None:
        _require_model(self.model, "pal eval")
        require_data(self.data, "pal eval")
        if self.unknown not in UNKNOWN_POLICIES:
            raise ConfigError(f"unknown={self.unknown!r} is invalid; use one of "
                              f"{UNKNOWN_POLICIES}")
        self._check("pal eval", output_required=False)


@dataclass
class PalAdaptConfig(_RewardCommand):
    """``pluralign pal adapt``: fit new users' mixture weights, everything else frozen.

    Attributes:
        model: PAL folder written by `pal train`.
        data: pairs of users the model has not seen, read whole (``data=PATH`` is short for
            data.source=PATH).
        n: pairs per new user (their first n); None uses all.
        output_dir: folder for the adapted model, config.yaml and adapted_users.json.
    """

    model: str | None = None
    n: int | None = None
    output_dir: str | None = None

    def __post_init__(self) -> None:
        _require_model(self.model, "pal adapt")
        require_data(self.data, "pal adapt")
        if self.n is not None:
            check_fields(self, {"n": COUNT})
        self._check("pal adapt", output_required=True)


def load_reward_model(folder: str, cache_dir: str) -> Any:
    """The PAL or Bradley–Terry model saved in ``folder`` (its kind read from config.json)."""
    from pluralign.reward.base import CheckpointError, read_checkpoint_meta
    from pluralign.reward.bradley_terry import BradleyTerryRewardModel
    from pluralign.reward.pal import PALRewardModel

    kind = read_checkpoint_meta(folder).get("class")
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


def train_reward_model(config: PalTrainConfig) -> dict[str, Any]:
    """Fit the model ``config`` describes and write its run folder; returns the metrics."""
    from pluralign.reward.bradley_terry import BradleyTerryRewardModel
    from pluralign.reward.encoders import MiniLMEncoder, embed_pairs
    from pluralign.reward.pal import PALRewardModel

    config.set_threads()
    encoder = MiniLMEncoder(cache_dir=config.cache_dir, show_progress=config.progress)
    train, test = load_data(config.data)
    train_pairs = embed_pairs(train, encoder)
    test_pairs = embed_pairs(test, encoder) if test is not None else None
    model: Any
    metrics: dict[str, Any]
    if config.kind == "pal":
        model = PALRewardModel(encoder.dim, config.model_config(), encoder)
        history = model.fit(train, train_pairs)
        metrics = {"train_accuracy": model.accuracy(train, train_pairs)}
        if test is not None:
            metrics["heldout_accuracy"] = model.accuracy(test, test_pairs, unknown="average")
        metrics["parameter_counts"] = model.parameter_counts()
    else:
        model = BradleyTerryRewardModel(encoder.dim, config.model_config(), encoder)
        history = model.fit(train_pairs)
        metrics = {"train_accuracy": model.accuracy(train_pairs)}
        if test is not None:
            metrics["heldout_accuracy"] = model.accuracy(test_pairs)
        metrics["parameter_counts"] = sum(p.numel() for p in model.parameters())
    metrics["loss_history"] = history
    out = Path(config.output_dir)
    model.save_pretrained(out)
    write_config(out, config)
    _plot_loss(history, out / "loss.png")
    write_metrics(out, metrics)
    heldout = (f", held-out pairs {metrics['heldout_accuracy']:.3f}"
               if "heldout_accuracy" in metrics else "")
    print(f"train accuracy {metrics['train_accuracy']:.3f}{heldout}; model in {out}")
    return metrics


def evaluate_reward_model(config: PalEvalConfig) -> dict[str, Any]:
    """Pairwise accuracy of ``config.model`` on ``config.data``; returns the metrics."""
    from pluralign.reward.pal import PALRewardModel

    config.set_threads()
    model = load_reward_model(config.model, config.cache_dir)
    data = load_data(config.data)[0]
    if isinstance(model, PALRewardModel):
        accuracy = model.accuracy(data, unknown=config.unknown)
    else:
        accuracy = model.accuracy(data)
    metrics = {"accuracy": accuracy, "pairs": len(data), "model": config.model,
               "data": config.data.source}
    if config.output_dir:
        write_config(config.output_dir, config)
        write_metrics(config.output_dir, metrics)
    print(f"pairwise accuracy {accuracy:.4f} on {len(data)} pairs")
    return metrics


def adapt_reward_model(config: PalAdaptConfig) -> list[str]:
    """Fit the new users of ``config.data`` into the PAL model ``config.model`` and save it in
    ``config.output_dir``; returns the adapted user ids."""
    from pluralign.reward.pal import PALRewardModel

    config.set_threads()
    model = load_reward_model(config.model, config.cache_dir)
    if not isinstance(model, PALRewardModel):
        raise ConfigError(f"{config.model} is not a PAL model; only PAL adapts to new users")
    users = model.adapt(load_data(config.data)[0], n=config.n)
    model.save_pretrained(config.output_dir)
    write_config(config.output_dir, config)
    groups = model.user_groups()
    out = Path(config.output_dir) / "adapted_users.json"
    write_json(out, {u: groups[u] for u in users})
    print(f"adapted {len(users)} new user(s); dominant prototypes in {out}")
    return users
