"""PK identity sampler: batches of P identities × K images, for the batch-hard triplet loss.

Written here rather than taken from torchreid (``RandomIdentitySampler``) because that one draws
from Python's global `random` (so it is neither seedable per epoch nor rank-aware) and yields a
flat index stream whose batch boundaries depend on the loader's batch size.

Per epoch, with a generator seeded by ``(seed, epoch)``: each identity's images are shuffled and
cut into chunks of K; an identity with fewer than K images yields one chunk drawn *with
replacement* (the standard choice: its images repeat within the batch rather than the identity
being dropped); an identity with ``n >= K`` images yields ``n // K`` chunks (the remainder is left
out this epoch and shuffled back in next epoch). Batches are then formed by repeatedly picking P
distinct identities that still hold chunks, until fewer than P remain. Every rank computes the
same batch list and keeps ``batches[rank::world_size]``, truncated to the same length on every
rank (so DDP processes step together); the ranks' batches are disjoint and together form the
epoch's batch list minus at most ``world_size - 1`` batches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from attrimp.errors import DataError


class PKSampler(Sampler[list[int]]):
    """A *batch* sampler: ``DataLoader(ds, batch_sampler=PKSampler(ds.targets, p=16, k=4))``.

    Call ``set_epoch(epoch)`` before each epoch (as with `DistributedSampler`).
    """

    def __init__(
        self,
        labels: Sequence[int],
        p: int,
        k: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if p < 1 or k < 1:
            raise DataError(f"The PK sampler needs P >= 1 and K >= 1, not P={p}, K={k}.")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not valid for world_size {world_size}.")
        labels = np.asarray(labels, dtype=np.int64)
        self._ids, inverse = np.unique(labels, return_inverse=True)
        if len(self._ids) < p:
            raise DataError(
                f"A PK batch needs P={p} distinct identities but the training set has only "
                f"{len(self._ids)}; lower P."
            )
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))[:-1]
        self._groups = np.split(order, bounds)
        self.p, self.k = p, k
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of an epoch, before rank sharding (identical on every rank)."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        chunks: list[list[np.ndarray]] = []
        for idx in self._groups:
            if len(idx) < self.k:
                chunks.append([rng.choice(idx, size=self.k, replace=True)])
            else:
                perm = rng.permutation(idx)
                n = len(idx) // self.k
                chunks.append([perm[i * self.k : (i + 1) * self.k] for i in range(n)])
        batches: list[list[int]] = []
        remaining = np.array([len(c) for c in chunks])
        while (remaining > 0).sum() >= self.p:
            avail = np.flatnonzero(remaining > 0)
            chosen = rng.choice(avail, size=self.p, replace=False)
            batch: list[int] = []
            for g in chosen:
                remaining[g] -= 1
                batch.extend(int(i) for i in chunks[g][remaining[g]])
            batches.append(batch)
        self._cache = (epoch, batches)
        return batches

    def _mine(self) -> list[list[int]]:
        batches = self.epoch_batches()
        per_rank = len(batches) // self.world_size
        return batches[self.rank :: self.world_size][:per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._mine()

    def __len__(self) -> int:
        return len(self._mine())
