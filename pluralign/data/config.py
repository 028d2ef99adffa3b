"""The ``data:`` section every command that reads preference pairs shares, and the one function
that turns it into a train split and an optional held-out split.

``data: PATH`` is short for ``{source: PATH}``; ``source: synthetic`` builds a population from
``population`` (:mod:`pluralign.data.synthetic`); any other source goes through
:func:`pluralign.data.load_preferences`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import datasets

from pluralign.data.synthetic import PopulationConfig
from pluralign.errors import ConfigError
from pluralign.validation import check_number


@dataclass
class DataConfig:
    """Where the preference pairs come from and how many are held out.

    Attributes:
        source: 'synthetic' (a population built from ``population``) or a path / Hub id that
            :func:`pluralign.data.load_preferences` reads.
        format: loader format (jsonl, csv, parquet, prism, community_alignment, hh_rlhf, hf);
            detected when omitted.
        options: loader keyword options (e.g. split, limit).
        population: PopulationConfig fields of the synthetic population.
        test_size: held-out fraction (0 = no evaluation split).
        seed: seed of the train/test split.
    """

    SHORTHAND = "source"

    source: str | None = None
    format: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    population: PopulationConfig | None = None
    test_size: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source is None:
            raise ConfigError("data.source is missing: use 'synthetic' or a path to preference "
                              "data")
        if not isinstance(self.source, str) or not self.source:
            raise ConfigError(f"data.source={self.source!r} is invalid; use 'synthetic' or a "
                              "path to preference data")
        if self.source != "synthetic" and self.population is not None:
            raise ConfigError("data.population is only read with data.source: synthetic")
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"data.options={self.options!r} is invalid; use a mapping of "
                              "loader options, e.g. {split: test, limit: 100}")
        check_number(self.test_size, "data.test_size", minimum=0, maximum=1,
                     exclusive_maximum=True)
        check_number(self.seed, "data.seed", minimum=0, integer=True)



def load_data(spec: DataConfig) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Train and (optional) held-out split described by ``spec``."""
    if spec.source == "synthetic":
        from pluralign.data.synthetic import make_population

        dataset = make_population(spec.population or PopulationConfig()).dataset
    else:
        from pluralign.data.loaders import load_preferences

        dataset = load_preferences(spec.source, format=spec.format, **spec.options)
    if not spec.test_size:
        return dataset, None
    from pluralign.data.splits import train_test_split_pairs

    split = train_test_split_pairs(dataset, test_size=spec.test_size, seed=spec.seed)
    return split["train"], split["test"]
