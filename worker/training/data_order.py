"""The data order: a job's data_order as optimizer-step windows, a pure function of (seed, epoch).

Every order is the same recipe with another pool size (in optimizer-step windows): a seeded
shuffle, then pools of that many windows sorted by length and cut into windows, then the full
windows shuffled (as HF's LengthGroupedSampler does). A window is one optimizer step, a sum over
its rows, so sorting inside one window changes only the padding of its micro-batches, never the
step: a pool of one window is random order.

- random: pools of 1 window. Each step's batch is a random sample of the data.
- windowed: pools of 4 windows. Each batch holds rows of similar length from a sample of
  4 x batch_size rows: less padding than random, batches still close to a sample.
- grouped: pools of 50 windows. The least padding; a batch holds the longest (or shortest)
  rows of 50 x batch_size, so it is far from a sample (short rows and long rows can differ in
  label mix, which a step then sees alone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from core.jobspec import DATA_ORDER_POOL_WINDOWS as POOL_WINDOWS
from core.jobspec import DEFAULT_DATA_ORDER
from worker.training.config import TrainConfig


def epoch_windows(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  data_order: str = DEFAULT_DATA_ORDER) -> list[list[int]]:
    """The optimizer-step windows of one epoch, as example indices, each sorted longest first (so
    its micro-batches pad little). The one short window (the epoch's remainder) stays last.
    Resume relies on this being a pure function of its arguments."""
    if data_order not in POOL_WINDOWS:
        raise ValueError(f"data_order {data_order!r}: choose one of {', '.join(POOL_WINDOWS)}")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    pool = batch_size * POOL_WINDOWS[data_order]
    windows: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool].tolist(), key=lambda i: -lengths[i])
        windows.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    short = [w for w in windows if len(w) < batch_size]
    full = [w for w in windows if len(w) == batch_size]
    return [full[i] for i in rng.permutation(len(full))] + short


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def total_optimizer_steps(config: TrainConfig, num_examples: int) -> int:
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * steps_per_epoch(num_examples, config.batch_size)))
