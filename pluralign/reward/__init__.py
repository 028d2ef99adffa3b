"""Reward models on frozen text embeddings: Bradley–Terry, per-type relabeling, and PAL.

Public names: :class:`ItemEncoder`, :class:`MiniLMEncoder`, :class:`HFEncoder`,
:func:`embed_pairs` (encoders with an on-disk cache); :class:`BradleyTerryRewardModel`,
:func:`train_per_group` (Bradley–Terry); :func:`relabel_with_average_reward` ([DAHP, §6]);
:class:`PALRewardModel`, :class:`PALConfig` (PAL-A / PAL-B); :class:`RewardTrainingConfig` (the
fields both configs share); :func:`adjusted_rand_index`.
"""

from pluralign.reward.base import RewardTrainingConfig
from pluralign.reward.bradley_terry import (
    BradleyTerryConfig,
    BradleyTerryRewardModel,
    train_per_group,
)
from pluralign.reward.clustering import adjusted_rand_index
from pluralign.reward.encoders import (
    EmbeddingCache,
    HFEncoder,
    ItemEncoder,
    MiniLMEncoder,
    PairEmbeddings,
    embed_pairs,
)
from pluralign.reward.pal import PALConfig, PALRewardModel, UnknownUserError
from pluralign.reward.relabel import average_reward_margins, relabel_with_average_reward

__all__ = [
    "BradleyTerryConfig", "BradleyTerryRewardModel", "EmbeddingCache", "HFEncoder", "ItemEncoder",
    "MiniLMEncoder", "PALConfig", "PALRewardModel", "PairEmbeddings", "RewardTrainingConfig",
    "UnknownUserError",
    "adjusted_rand_index", "average_reward_margins", "embed_pairs", "relabel_with_average_reward",
    "train_per_group",
]
