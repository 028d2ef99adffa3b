"""What the experiments that train several methods on a synthetic population share: their config
(the recipe sections of :class:`~pluralign.training.methods.MethodsConfig` plus ``data:`` and the
run's own settings) and how they start and end a run."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pluralign.data.config import DataConfig
from pluralign.data.synthetic import PopulationConfig
from pluralign.errors import ConfigError
from pluralign.runs import RunFolderOptions, published
from pluralign.training.methods import MethodsConfig, check_seeds
from pluralign.validation import COUNT, OPEN_UNIT, check_fields, check_number

#: SFT settings of the tiny-model experiments (configs/demo.yaml, configs/group_robust.yaml).
TINY_SFT = {"learning_rate": 3e-3, "num_train_epochs": 1, "per_device_train_batch_size": 16}


def synthetic_data(test_size: float, **population: Any) -> DataConfig:
    """A ``data:`` section: a synthetic population with these PopulationConfig fields, and
    ``test_size`` of its pairs held out."""
    return DataConfig(source="synthetic", population=PopulationConfig(**population),
                      test_size=test_size)


@dataclass
class PopulationExperimentConfig(MethodsConfig, RunFolderOptions):
    """An experiment that trains ``methods`` on a synthetic population it generates.

    Attributes:
        seed: seeds the population, the split, the models' initialisation, SFT, every method's
            training and the bootstraps (a different ``data.seed``, ``data.population.seed``,
            ``sft.seed`` or ``training.seed`` is refused).
        output_dir: run folder (config.yaml, metrics.json, report.html, PNGs).
        data: ``source: synthetic`` and the population (``data.population``, PopulationConfig
            fields) with the held-out share ``test_size``.
        threads: torch CPU threads.
        n_boot: bootstrap resamples of every interval.
    """

    output_dir: str = "runs/experiment"
    data: DataConfig = field(default_factory=lambda: DataConfig(source="synthetic",
                                                                test_size=0.25))
    threads: int = 1
    n_boot: int = 1000

    def __post_init__(self) -> None:
        where = type(self).__name__
        check_fields(self, {"threads": COUNT, "n_boot": COUNT})
        if self.data.source != "synthetic":
            raise ConfigError(f"{where}: data.source={self.data.source!r}; this experiment "
                              "generates its population: use data.source: synthetic")
        check_number(self.data.test_size, f"{where}.data.test_size", **OPEN_UNIT)
        check_seeds(where, self.seed, data_seeds(self.data))
        super().__post_init__()

    def population(self) -> PopulationConfig:
        """``data.population`` seeded with ``seed``."""
        population = self.data.population or PopulationConfig()
        return dataclasses.replace(population, seed=self.seed)


def data_seeds(data: DataConfig) -> dict[str, int | None]:
    """The seeds a ``data`` section sets itself (None: left at the default 0), for
    :func:`~pluralign.training.methods.check_seeds`."""
    population = data.population or PopulationConfig()
    return {"data.seed": data.seed or None, "data.population.seed": population.seed or None}


def start_run(config: PopulationExperimentConfig) -> Path:
    """Set the torch thread count, quieten transformers' logging; the run folder."""
    import torch

    torch.set_num_threads(config.threads)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return Path(config.output_dir)


def print_summary(console: Any, metrics: dict[str, Any], output_dir: str) -> None:
    """An experiment's summary bullets and where its report is, on a rich ``console``."""
    for line in metrics["summary"]:
        console.print(f"• {line}")
    # soft_wrap: a path must stay copy-pasteable at any terminal width (rich wraps at 80 in CI).
    console.print(f"Report: {published(Path(output_dir) / 'report.html')}", soft_wrap=True,
                  markup=False, highlight=False)
