"""Checkpoints and the RNG streams they carry.

run_dir/checkpoints/step-<n>: the task's servable files plus training_state.pt (config, loop
state, optimizer, scheduler, scaler, every RNG stream), written atomically; the best and the
last k are kept. A resume restores all of it and continues as if never interrupted.
"""

from __future__ import annotations

import errno
import random
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

# The layout (step-<n> directories, training_state.pt) is the model store's: the API reads it
# too (resume, retention), so it is defined once there.
from core.store import (
    CHECKPOINT_PREFIX,
    TRAINING_STATE_FILE,
    atomic_dir,
    checkpoint_step,
    list_checkpoints,
)
from worker import faults
from worker.protocols import TrainingError, TrainingSink

if TYPE_CHECKING:
    from worker.adaptive_batch import Trainer

# Bumped when training_state.pt changes shape; an older checkpoint is then not resumed from.
STATE_FORMAT = 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # all CUDA devices too


def capture_rng() -> dict[str, Any]:
    """Every RNG stream that training draws from, in a form torch.load(weights_only=True) accepts."""
    np_state: tuple[Any, ...] = np.random.get_state()  # type: ignore[assignment]  # legacy tuple
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def remove_stale_temporaries(root: Path) -> None:
    """Half-written directories of a worker killed mid-save."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(trainer: Trainer, root: Path, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> Path:
    """Write the checkpoint of the current step. A full disk fails the job in words: the half-
    written directory goes (atomic_dir), the previous checkpoints stay as they were."""
    step = trainer.state.global_step
    path = root / f"{CHECKPOINT_PREFIX}{step}"
    try:
        _write_checkpoint(trainer, path, optimizer, scheduler)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        earlier = [p for p in list_checkpoints(root) if checkpoint_step(p) < step]
        last_good = (f"the last good checkpoint, step {checkpoint_step(earlier[-1])}, is intact"
                     if earlier else "there was no earlier checkpoint")
        raise TrainingError(
            f"The disk is full: the checkpoint at step {step} could not be written under {root} "
            f"({e.strerror}). Nothing half-written was kept and {last_good}. Free space on the models "
            "volume (DELETE /jobs/{id} of old jobs frees theirs, or lower TUNESERVE_KEEP_LAST_CHECKPOINTS).",
            kind="environment",
        ) from e
    return path


def _write_checkpoint(trainer: Trainer, path: Path, optimizer: torch.optim.Optimizer,
                      scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    with atomic_dir(path) as tmp:
        trainer.task.save_checkpoint(tmp)
        faults.check_disk(trainer.state.global_step, trainer.config.fault_disk_full_from_step, str(tmp))
        torch.save({
            "format": STATE_FORMAT,
            "config": asdict(trainer.config),
            "loop": asdict(trainer.state),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "rng": capture_rng(),
        }, tmp / TRAINING_STATE_FILE)


def rotate_checkpoints(root: Path, keep_last: int, best_step: int | None, sink: TrainingSink) -> None:
    checkpoints = list_checkpoints(root)
    keep = set(checkpoints[-max(1, keep_last):])  # the latest is what a resume needs
    for path in checkpoints:
        if path not in keep and checkpoint_step(path) != best_step:
            shutil.rmtree(path, ignore_errors=True)
            sink.checkpoint_removed(path)


def load_training_state(path: Path) -> dict[str, Any] | None:
    state: dict[str, Any] = torch.load(path / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
    return state if state.get("format") == STATE_FORMAT else None
