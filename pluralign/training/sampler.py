"""Batches that hold whole groups (annotators): the sampler behind ``Column(..., whole=True)``.

An objective whose likelihood couples the pairs of one group (panel MixDPO: one β per annotator,
:func:`~pluralign.objectives.mixdpo.panel_mixdpo_loss`) needs each group's pairs in one batch.
:class:`WholeGroupBatchSampler` yields batches of pair indices, built per epoch as follows:

1. **Chunks.** A group with ``n ≤ batch_size`` pairs is one chunk. A larger group is split into
   ``⌈n / batch_size⌉`` chunks of near-equal size (which pairs go to which chunk is reshuffled
   every epoch); each chunk is its own factor of the objective, a composite likelihood (see
   :func:`~pluralign.objectives.mixdpo.panel_mixdpo_loss`). Two chunks of one group never share
   a batch (any two are together larger than a batch).
2. **Batches.** Chunks are packed into batches of at most ``batch_size`` pairs by first-fit
   decreasing (chunks of equal size in a seeded random order, so batch composition changes from
   epoch to epoch). The number of batches depends only on the chunk sizes, so every epoch has
   the same length (what ``Trainer`` and resume need). While the number of batches is not a
   multiple of the number of processes, the largest batch is split in two (between its chunks,
   or halving its only chunk). Batch sizes therefore vary (≤ ``batch_size``).
3. **Processes.** The batches are shuffled (seeded by ``seed + epoch``, identical on every
   process) and process ``r`` of ``W`` takes batches ``r, r + W, ...``: whole chunks, every pair
   exactly once per epoch over all processes, the same number of batches on each.

It subclasses ``transformers``' ``BatchRebalanceSampler`` only for the Trainer's handling of that
class: it is passed to the ``DataLoader`` as ``batch_sampler`` and accelerate's re-sharding is
switched off (this sampler is already rank-aware). Nothing of the parent's algorithm is used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from transformers.trainer_pt_utils import BatchRebalanceSampler

from pluralign.errors import ConfigError


class WholeGroupBatchSampler(BatchRebalanceSampler):
    """Batches of whole groups (chunks of large groups), sharded whole across processes.

    Args:
        groups: each pair's group id (any integers).
        batch_size: most pairs per batch (per process).
        num_processes / rank: data-parallel world size and this process's index.
        seed: seed of the shuffles (epoch ``e`` uses ``seed + e``).
        shuffle: shuffle chunks and batches (training); False keeps the groups in order of first
            appearance (evaluation).
    """

    def __init__(self, groups: Sequence[int] | np.ndarray, batch_size: int, *,
                 num_processes: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        ids = np.asarray(groups, dtype=np.int64).reshape(-1)
        if batch_size < 1 or num_processes < 1 or not 0 <= rank < num_processes:
            raise ConfigError(f"WholeGroupBatchSampler: batch_size={batch_size} and "
                              f"num_processes={num_processes} must be >= 1, 0 <= rank={rank} "
                              f"< num_processes")
        if ids.size < num_processes:
            raise ConfigError(f"{ids.size} pairs cannot be shared by {num_processes} processes "
                              "with whole annotators per batch; use more data or fewer processes")
        self.batch_size, self.num_processes, self.rank = batch_size, num_processes, rank
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # groups in order of first appearance
        rank_of = np.empty_like(order)
        rank_of[order] = np.arange(order.size)
        by_group = np.argsort(rank_of[inverse], kind="stable")
        self.members = np.split(by_group, np.cumsum(np.bincount(rank_of[inverse]))[:-1])
        self.num_batches = len(self._batches(np.random.default_rng(0), shuffle=False))

    # ------------------------------------------------------------------ the algorithm
    def _chunks(self, rng: np.random.Generator, shuffle: bool) -> list[np.ndarray]:
        chunks: list[np.ndarray] = []
        for members in self.members:
            pairs = rng.permutation(members) if shuffle else members
            parts = -(-pairs.size // self.batch_size)
            chunks.extend(np.array_split(pairs, parts))
        return chunks

    def _batches(self, rng: np.random.Generator, shuffle: bool) -> list[np.ndarray]:
        chunks = self._chunks(rng, shuffle)
        tie = rng.permutation(len(chunks)) if shuffle else np.arange(len(chunks))
        bins: list[list[np.ndarray]] = []
        room: list[int] = []
        for i in sorted(range(len(chunks)), key=lambda i: (-chunks[i].size, tie[i])):
            size = chunks[i].size
            slot = next((b for b, free in enumerate(room) if free >= size), None)
            if slot is None:
                bins.append([])
                room.append(self.batch_size)
                slot = len(bins) - 1
            bins[slot].append(chunks[i])
            room[slot] -= size
        while len(bins) % self.num_processes:
            largest = max(range(len(bins)), key=lambda b: (self.batch_size - room[b], -b))
            if room[largest] == self.batch_size - 1 and len(bins[largest]) == 1:
                raise ConfigError(f"{sum(c.size for b in bins for c in b)} pairs cannot be "
                                  f"dealt to {self.num_processes} processes in whole batches; "
                                  "use more data or fewer processes")
            parts = bins.pop(largest)
            room.pop(largest)
            if len(parts) > 1:
                halves = [parts[: len(parts) // 2], parts[len(parts) // 2:]]
            else:
                halves = [[half] for half in np.array_split(parts[0], 2)]
            for half in halves:
                bins.append(half)
                room.append(self.batch_size - sum(c.size for c in half))
        return [np.concatenate(b) for b in bins]

    # ------------------------------------------------------------------ Sampler protocol
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self) -> list[np.ndarray]:
        """This epoch's batches over all processes, in the order they are dealt."""
        rng = np.random.default_rng(self.seed + self.epoch)
        batches = self._batches(rng, self.shuffle)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches()[self.rank::self.num_processes]:
            yield batch.tolist()

    def __len__(self) -> int:
        return self.num_batches // self.num_processes
