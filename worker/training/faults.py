"""Injected faults, driven by the `fault_*` settings: how the OOM recovery and the cancel path are
tested on a CPU, and drilled on a real GPU. Every function here is a no-op when its setting is unset.
"""

from __future__ import annotations

import errno
import os
import time

import torch


def _injected_oom(what: str) -> torch.OutOfMemoryError:
    # The same type a real CUDA OOM raises, so the very same except clause handles both.
    return torch.OutOfMemoryError(
        f"CUDA out of memory (injected by tuneserve fault settings): {what}. "
        "Unset TUNESERVE_FAULT_OOM_* to turn this off."
    )


def check_train_batch(micro_batch_size: int, step: int, above: int | None, from_step: int) -> None:
    """Raise an OOM for a training micro-batch larger than `above`, at optimizer step `step`
    (1-based for training steps; the probe counts as step 0) when `step >= from_step`."""
    if above is not None and micro_batch_size > above and step >= from_step:
        raise _injected_oom(f"training micro-batch of {micro_batch_size} > {above} at step {step}")


def check_eval_batch(eval_batch_size: int, above: int | None) -> None:
    if above is not None and eval_batch_size > above:
        raise _injected_oom(f"evaluation batch of {eval_batch_size} > {above}")


def step_delay(delay_s: float) -> None:
    """Slow every optimizer step down, so a test can cancel or kill a job mid-run."""
    if delay_s > 0:
        time.sleep(delay_s)


def check_disk(step: int, from_step: int | None, where: str) -> None:
    """Raise the OSError a full disk raises, for a checkpoint written at `step` >= `from_step`."""
    if from_step is not None and step >= from_step:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected by "
                      "TUNESERVE_FAULT_DISK_FULL_FROM_STEP)", where)
