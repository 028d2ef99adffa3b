"""Simulation environments with heterogeneous annotators ([DAHP, §7.2]).

The §7.2 experiment that trains policies in them is :mod:`pluralign.experiments.dahp`.
"""

from pluralign.envs.policies import MLPPolicy, TabularPolicy, build_policy
from pluralign.envs.proximity import (
    FullInformation,
    PairedPairs,
    Pairs,
    ProximityConfig,
    ProximityEnv,
)

__all__ = [
    "FullInformation",
    "MLPPolicy",
    "PairedPairs",
    "Pairs",
    "ProximityConfig",
    "ProximityEnv",
    "TabularPolicy",
    "build_policy",
]
