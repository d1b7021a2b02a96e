"""PK identity sampler: batch shape, replacement for small identities, determinism, ranks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from attrimp.data.sampler import PKSampler
from attrimp.errors import DataError

# 12 identities; identity 3 has 2 images, identity 7 has 1, the rest 4-9.
RNG = np.random.default_rng(0)
SIZES = [int(RNG.integers(4, 10)) for _ in range(12)]
SIZES[3], SIZES[7] = 2, 1
LABELS = np.repeat(np.arange(12) * 10 + 5, SIZES)  # identities need not be 0..N-1
RNG.shuffle(LABELS)


def test_every_batch_is_p_identities_times_k_images():
    s = PKSampler(LABELS, p=4, k=3, seed=1)
    batches = list(s)
    assert len(batches) == len(s) > 0
    for b in batches:
        assert len(b) == 12
        counts = Counter(int(LABELS[i]) for i in b)
        assert len(counts) == 4 and set(counts.values()) == {3}


def test_small_identities_sampled_with_replacement():
    s = PKSampler(LABELS, p=4, k=3, seed=1)
    seen = {}
    for epoch in range(20):
        s.set_epoch(epoch)
        for b in s:
            for pid in (35, 75):
                idx = [i for i in b if LABELS[i] == pid]
                if idx:
                    seen.setdefault(pid, []).append(idx)
    assert 75 in seen and all(len(set(i)) == 1 for i in seen[75])  # the 1-image identity repeats
    assert all(len(set(i)) <= 2 for i in seen[35])
    assert all(set(i) <= set(np.flatnonzero(LABELS == 35)) for i in seen[35])


def test_large_identities_draw_without_repeats_within_an_epoch():
    s = PKSampler(LABELS, p=4, k=3, seed=2)
    flat = [i for b in s for i in b if SIZES[(LABELS[i] - 5) // 10] >= 3]
    assert len(flat) == len(set(flat))


def test_deterministic_per_seed_and_epoch():
    a, b = PKSampler(LABELS, 4, 3, seed=7), PKSampler(LABELS, 4, 3, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    c = PKSampler(LABELS, 4, 3, seed=8)
    c.set_epoch(3)
    assert list(a) != list(c)
    b.set_epoch(3)
    assert list(a) == list(b)  # going back to an epoch gives it back


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_partition_the_batches(world_size):
    full = PKSampler(LABELS, 2, 2, seed=5)
    full.set_epoch(1)
    everything = list(full)
    shards = []
    for rank in range(world_size):
        s = PKSampler(LABELS, 2, 2, seed=5, rank=rank, world_size=world_size)
        s.set_epoch(1)
        shards.append(list(s))
    n = len(everything) // world_size
    assert all(
        len(sh) == n == len(PKSampler(LABELS, 2, 2, seed=5, world_size=world_size)) for sh in shards
    )
    flat = [tuple(b) for sh in shards for b in sh]
    assert len(set(flat)) == len(flat)  # disjoint
    assert sorted(flat) == sorted(tuple(b) for b in everything[: n * world_size])


def test_bad_arguments():
    with pytest.raises(DataError, match="P=20 distinct identities.*only 12"):
        PKSampler(LABELS, p=20, k=2)
    with pytest.raises(DataError, match="rank 2"):
        PKSampler(LABELS, p=2, k=2, rank=2, world_size=2)


def test_works_as_a_dataloader_batch_sampler():
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(torch.as_tensor(LABELS))
    loader = DataLoader(ds, batch_sampler=PKSampler(LABELS, p=3, k=2, seed=0))
    (batch,) = next(iter(loader))
    assert batch.shape == (6,) and len(set(batch.tolist())) == 3
