"""The ``data:`` section every command that reads preference pairs shares, and the one function
that turns it into a train split and an optional held-out split.

``data: PATH`` is short for ``{source: PATH}``; ``source: synthetic`` builds a population from
``population`` (:mod:`pluralign.data.synthetic`); any other source goes through
:func:`pluralign.data.load_preferences` with ``format`` and ``options``, which are checked against
the format's options dataclass (:mod:`pluralign.data.formats`) when the section is built.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import datasets

from pluralign.data.formats import REGISTRY, detect_format, get_format
from pluralign.data.formats.base import LoaderOptions
from pluralign.data.loaders import load_preferences, looks_local
from pluralign.data.synthetic import PopulationConfig
from pluralign.errors import ConfigError
from pluralign.validation import check_number


def _option_classes() -> dict[str, type]:
    """The options dataclass of every format (``--help`` lists ``data.options`` from these)."""
    return {name: spec.options for name, spec in REGISTRY.items()}


@dataclass
class DataConfig:
    """Where the preference pairs come from and how many are held out.

    Attributes:
        source: 'synthetic' (a population built from ``population``) or a path / Hub id that
            :func:`pluralign.data.load_preferences` reads.
        format: loader format (prism, community_alignment, hh_rlhf, jsonl, csv, parquet, hf);
            detected from the source when omitted (precedence: pluralign.data.formats); not
            read with source: synthetic.
        options: options of that format, checked when the config is built: the keys each
            format takes are listed below; not read with source: synthetic.
        population: PopulationConfig fields of the synthetic population (source: synthetic
            only).
        test_size: held-out fraction (0 = no evaluation split).
        seed: seed of the train/test split.
    """

    SHORTHAND = "source"

    source: str | None = None
    format: str | None = None
    options: dict[str, Any] = field(default_factory=dict,
                                    metadata={"variants": _option_classes,
                                              "variant_of": "format"})
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
        if self.source == "synthetic":
            for name in ("format", "options"):
                if getattr(self, name):
                    raise ConfigError(f"data.{name}={getattr(self, name)!r} is not read with "
                                      "data.source: synthetic (its pairs come from "
                                      "data.population); remove it or name a file in "
                                      "data.source")
        else:
            self.loader_options()

    def loader_options(self) -> LoaderOptions | None:
        """``options`` checked against the options dataclass of ``format`` (or of the detected
        format); None for a synthetic source, and where the format cannot be known yet (a local
        path that does not exist, which loading refuses), whose option names are only checked
        against every format's."""
        if self.source == "synthetic":
            return None
        if self.format is None:
            if looks_local(self.source) and not Path(os.fspath(self.source)).expanduser().exists():
                known = {f.name for cls in _option_classes().values() for f in fields(cls)}
                unknown = sorted(str(k) for k in self.options if k not in known)
                if unknown:
                    raise ConfigError(f"data.options {unknown} are options of no format; "
                                      f"valid: {', '.join(sorted(known))}")
                return None
            fmt = detect_format(self.source)
        else:
            fmt = self.format
        return get_format(fmt, "data.format").build_options(self.options, "data.options")


def require_data(spec: DataConfig | None, command: str, whole: bool = True) -> DataConfig:
    """The ``data:`` section of ``command``, which must be given; with ``whole`` the command
    reads the whole dataset, so ``test_size`` is refused."""
    if spec is None:
        raise ConfigError(f"data is missing: name the preference data {command} reads, e.g. "
                          "data=pairs.jsonl (short for data.source=pairs.jsonl) or "
                          "data=synthetic")
    if whole and spec.test_size:
        raise ConfigError(f"data.test_size={spec.test_size!r}: {command} reads the whole "
                          "dataset; remove data.test_size")
    return spec


def load_data(spec: DataConfig) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """Train and (optional) held-out split described by ``spec``."""
    if spec.source == "synthetic":
        from pluralign.data.synthetic import make_population

        dataset = make_population(spec.population or PopulationConfig()).dataset
    else:
        dataset = load_preferences(spec.source, format=spec.format, **spec.options)
    if not spec.test_size:
        return dataset, None
    from pluralign.data.splits import train_test_split_pairs

    split = train_test_split_pairs(dataset, test_size=spec.test_size, seed=spec.seed)
    return split["train"], split["test"]
