"""What each process trains on in one epoch: the :class:`Plan` of an epoch (batch, accumulation,
rank, seed) and the distributed sampler of indexable datasets (:func:`sharded_batches`,
:func:`eval_shard`), used by the tasks' batch producers and by the engine."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Plan:
    """What a task needs to produce its batches for one epoch on one process.

    The global batch of ``batch_size`` samples is cut into ``accum_steps`` micro-batches, and
    each micro-batch into ``world_size`` shards; this process takes shard ``rank``. Shards are
    interleaved (sample i of a micro-batch goes to process i mod world_size), which keeps
    every global batch the same whatever the number of processes.
    """

    epoch: int = 0
    start_step: int = 0  # the first optimizer step of the epoch to produce (resuming mid-epoch)
    batch_size: int = 128
    accum_steps: int = 1
    rank: int = 0
    world_size: int = 1
    seed: int = 0

    def step_seed(self, step: int) -> int:
        """A seed for the augmentation of one optimizer step, the same on every process."""
        return (self.seed * 1_000_003 + self.epoch * 100_003 + step) % (2**63 - 1)


def sharded_batches(n: int, plan: Plan, shuffle: bool = True, drop_last: bool = True,
                    shard: bool = True) -> Iterator[list[Tensor]]:
    """The distributed sampler for indexable datasets: for each optimizer step from
    ``plan.start_step``, the list of this process's micro-batch index tensors (with
    ``shard=False``, the whole micro-batches, to shard after drawing per-sample randomness).

    The epoch's permutation of ``range(n)`` is drawn from (seed, epoch) alone. With
    ``drop_last`` the tail that does not fill a global batch is skipped (every step has the same
    size); otherwise the last batch is smaller.
    """
    if shuffle:
        g = torch.Generator().manual_seed(plan.seed * 7_919 + plan.epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    bs = plan.batch_size
    steps = n // bs if drop_last else math.ceil(n / bs)
    for s in range(plan.start_step, steps):
        batch = order[s * bs:(s + 1) * bs]
        micro = batch.tensor_split(plan.accum_steps) if len(batch) >= plan.accum_steps else [batch]
        yield [m[plan.rank::plan.world_size] for m in micro] if shard else list(micro)


def steps_in_epoch(n: int, batch_size: int, drop_last: bool = True) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def eval_shard(n: int, plan: Plan, batch_size: int) -> Iterator[Tensor]:
    """Index tensors of this process's share of an evaluation set (each sample exactly once)."""
    mine = torch.arange(plan.rank, n, plan.world_size)
    yield from mine.split(batch_size)
