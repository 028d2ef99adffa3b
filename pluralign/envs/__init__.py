"""Simulation environments with heterogeneous annotators (seeds/003 §7.2)."""

from pluralign.envs.experiment import ExperimentConfig, ExperimentResult, run_experiment
from pluralign.envs.policies import MLPPolicy, TabularPolicy, build_policy
from pluralign.envs.proximity import (
    FullInformation,
    PairedPairs,
    Pairs,
    ProximityConfig,
    ProximityEnv,
)

__all__ = [
    "ExperimentConfig",
    "ExperimentResult",
    "FullInformation",
    "MLPPolicy",
    "PairedPairs",
    "Pairs",
    "ProximityConfig",
    "ProximityEnv",
    "TabularPolicy",
    "build_policy",
    "run_experiment",
]
