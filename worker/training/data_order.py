"""The data order: length-grouped optimizer-step windows, a pure function of (seed, epoch)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from worker.training.config import TrainConfig


def epoch_windows(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_windows: int = 50) -> list[list[int]]:
    """The optimizer-step windows of one epoch, as example indices.

    A seeded shuffle, then pools of `group_windows` windows sorted by length (longest first)
    and cut into windows, then the full windows shuffled (as HF's LengthGroupedSampler does).
    The one short window (the epoch's remainder) stays last. Resume relies on this being a
    pure function of its arguments."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    pool = batch_size * max(1, group_windows)
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
