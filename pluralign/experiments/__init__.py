"""Experiments: recipes built from the library layers (torchtune's ``recipes/``).

Each shipped experiment is a config dataclass plus one function that runs it and writes a run
folder (:mod:`pluralign.runs`); ``pluralign experiment`` lists them and ``pluralign experiment
NAME [--config FILE] [key=value ...] --output-dir DIR`` runs one. Their configs are built from
the sections of a train recipe (``model:``, ``data:``, ``sft:``, ``training:``) plus a few fields
of their own; those that train several methods from one SFT model share
:class:`~pluralign.experiments.base.PopulationExperimentConfig` and
:func:`pluralign.training.methods.train_methods`. Nothing below this package imports it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Experiment:
    """A shipped experiment: where its config class and run function live, its one-line help,
    its default config file and its ``--help`` examples (``{command}`` stands for however it is
    invoked: ``pluralign experiment NAME`` or an alias such as ``pluralign demo``)."""

    module: str
    config: str
    run: str
    help: str
    default_config: str | None = None
    examples: str = ""

    def config_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.config)

    def runner(self) -> Any:
        return getattr(importlib.import_module(self.module), self.run)


EXPERIMENTS: dict[str, Experiment] = {
    "demo": Experiment(
        "pluralign.experiments.demo", "DemoConfig", "main",
        "embedded end-to-end demo: DPO vs MixDPO on a heterogeneous population and its "
        "homogeneous control", "configs/demo.yaml", """\
Examples:
  {command}                        # configs/demo.yaml, writes runs/demo/
  {command} --output-dir /tmp/demo seed=1
  {command} --output-dir /tmp/demo_quick training.num_train_epochs=1 \\
      data.population.n_annotators=30
  {command} --config configs/demo_smollm2.yaml    # SmolLM2-135M, LoRA

The sections model, data, sft and training are those of a train recipe (configs/tiny_cpu.yaml).
Writes config.yaml, report.html, PNG figures and metrics.json (micro/macro margins with CIs per
method and learned_beta_variance = final Var[beta] of Gamma MixDPO on each population)."""),
    "composition": Experiment(
        "pluralign.experiments.composition", "CompositionConfig", "main",
        "composition matrix: one DPO model per annotator group, each scored on every group "
        "([COMPOSITION])", None, """\
Examples:
  {command} model=runs/tiny_cpu_sft data=runs/pop data.test_size=0.2 \\
      attribute=attr.gender --output-dir runs/composition
  {command} model=runs/sft data=prism/ data.format=prism \\
      data.test_size=0.2 attribute=attr.age split=annotator training.learning_rate=1e-6 \\
      --output-dir runs/comp
  {command} --config configs/composition_smollm2.yaml   # SmolLM2 LoRA

data is any preference source (a saved synthetic population is its folder); model is the SFT
model every group's copy starts from and the reference. Writes composition.csv, the two
heatmaps, metrics.json and report.html; with seeds=[...] one such folder seed-<s>/ per seed and
the own-group advantage (pp) with its t-interval over seeds."""),
    "pal_benchmark": Experiment(
        "pluralign.experiments.pal_benchmark", "BenchmarkConfig", "main",
        "PAL vs homogeneous Bradley-Terry vs per-type oracle on a synthetic population ([PAL])",
        None, """\
Examples:
  {command} --config configs/pal_benchmark.yaml --output-dir runs/pal"""),
    "dahp": Experiment(
        "pluralign.experiments.dahp", "SimulateConfig", "run_simulation",
        "DAHP proximity environment: DPO, corrected DPO, agreement loss, indirect route "
        "([DAHP, §7.2])", None, """\
Examples:
  {command} --config configs/dahp_env.yaml --output-dir runs/dahp_env
  {command} experiment.policy=mlp experiment.seed=1 --output-dir runs/dahp_mlp
  {command} "experiment.methods=[dpo, agreement]" experiment.num_pairs=100000 \\
      --output-dir runs/quick

The run folder gets config.yaml, metrics.json (TV to the optimal policy, peak offset and
Spearman correlations per method, plus timings), policies.csv (each policy against the offset
delta = response - prompt, averaged over states), policies.png ([DAHP, Fig. 4]) and
report.html (all of it on one page; `pluralign report --output-dir RUN` rebuilds it)."""),
    "group_robust": Experiment(
        "pluralign.experiments.group_robust", "GroupRobustConfig", "main",
        "DPO vs MixDPO vs group-robust DPO on an 80/20 majority/minority population: "
        "worst-group accuracy gain (Ramesh et al. 2024)", "configs/group_robust.yaml", """\
Examples:
  {command} --output-dir runs/group_robust    # configs/group_robust.yaml
  {command} --output-dir runs/group_robust_90 seed=1 majority_share=0.9
  {command} --output-dir runs/group_robust_5 "seeds=[0, 1, 2, 3, 4]"

The sections model, data, sft and training are those of a train recipe (configs/tiny_cpu.yaml).
Writes config.yaml, metrics.json, report.html, group_accuracy.png and group_weights.png; with
seeds=[...] one such folder seed-<s>/ per seed and across-seed t-intervals of the worst-group gain
over DPO and over Static-RW (eta = 0) and of the average cost."""),
    "identification": Experiment(
        "pluralign.experiments.identification", "IdentificationConfig", "main",
        "is the spread of preference strength identified? per-pair vs panel likelihood, "
        "one-scale vs flexible margins, on true margins", "configs/identification.yaml", """\
Examples:
  {command} --output-dir runs/identification   # the shipped config
  {command} --output-dir runs/ident_quick "seeds=[0, 1]" \\
      "populations=[gamma_cv2_1]"

Writes config.yaml, fits.csv (every fit), table.csv (per population x margin model x likelihood:
CV² with a t-interval over seeds, spread and log-likelihood gap between starts), metrics.json and
report.html."""),
    "replicate": Experiment(
        "pluralign.experiments.replicate", "ReplicateConfig", "main",
        "the demo's claim (learned CV² larger on heterogeneous data) over seeds: paired "
        "t-interval and verdict", None, """\
Examples:
  {command} --output-dir runs/replicate "seeds=[0, 1, 2]"
  {command} "demo=[training.num_train_epochs=1]" --output-dir runs/rep_quick
  {command} --config configs/replicate_smollm2.yaml "seeds=[0]"

Each seed is a complete demo run folder seed-<s>/ (reused when its config is unchanged)."""),
}
