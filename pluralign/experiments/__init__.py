"""Experiments: recipes built from the library layers (torchtune's ``recipes/``).

Each shipped experiment is a config dataclass plus one function that runs it and writes a run
folder (:mod:`pluralign.runs`); ``pluralign experiment`` lists them and ``pluralign experiment
NAME [--config FILE] [key=value ...] --output-dir DIR`` runs one. Nothing below this package
imports it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Experiment:
    """A shipped experiment: where its config class and run function live."""

    module: str
    config: str
    run: str
    help: str
    default_config: str | None = None

    def config_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def runner(self) -> Any:
        return getattr(importlib.import_module(self.module), self.run)


EXPERIMENTS: dict[str, Experiment] = {
    "demo": Experiment("pluralign.experiments.demo", "DemoConfig", "main",
                       "embedded end-to-end demo: DPO vs MixDPO on a heterogeneous population "
                       "and its homogeneous control", "configs/demo.yaml"),
    "composition": Experiment("pluralign.experiments.composition", "CompositionConfig", "main",
                              "composition matrix: one DPO model per annotator group, each "
                              "scored on every group ([COMPOSITION])"),
    "pal_benchmark": Experiment("pluralign.experiments.pal_benchmark", "BenchmarkConfig",
                                "main", "PAL vs homogeneous Bradley-Terry vs per-type oracle on "
                                "a synthetic population ([PAL])"),
    "dahp": Experiment("pluralign.experiments.dahp", "SimulateConfig", "run_simulation",
                       "DAHP proximity environment: DPO, corrected DPO, agreement loss, "
                       "indirect route ([DAHP, §7.2])"),
    "group_robust": Experiment("pluralign.experiments.group_robust", "GroupRobustConfig", "main",
                               "DPO vs MixDPO vs group-robust DPO on an 80/20 majority/minority "
                               "population: worst-group accuracy gain (Ramesh et al. 2024)",
                               "configs/group_robust.yaml"),
    "replicate": Experiment("pluralign.experiments.replicate", "ReplicateConfig", "main",
                            "the demo's claim (learned CV² larger on heterogeneous data) over "
                            "seeds: paired t-interval and verdict"),
}
