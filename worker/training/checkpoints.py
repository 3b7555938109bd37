"""Checkpoints and the RNG streams they carry.

run_dir/checkpoints/step-<n>: the task's servable files plus training_state.pt (config, loop
state, optimizer, scheduler, scaler, every RNG stream), written atomically; the best and the
last k are kept. A resume restores all of it and continues as if never interrupted.
"""

from __future__ import annotations

import errno
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

# The layout (step-<n> directories, training_state.pt) is the model store's: the API reads it
# too (resume, retention), so it is defined once there.
from core.store import (
    CHECKPOINT_PREFIX,
    TRAINING_STATE_FILE,
    atomic_dir,
    checkpoint_step,
    list_checkpoints,
    prune_checkpoints,
)
from worker.training import faults
from worker.training.config import LoopState
from worker.training.devices import set_gradient_checkpointing
from worker.training.protocols import TrainingError, TrainingSink
from worker.training.rng import capture_rng, restore_rng

if TYPE_CHECKING:
    from worker.training.micro_batch import Trainer

# Bumped when training_state.pt changes shape; an older checkpoint is then not resumed from.
STATE_FORMAT = 1


def remove_stale_temporaries(root: Path) -> None:
    """Half-written directories of a worker killed mid-save."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(trainer: Trainer, root: Path) -> Path:
    """Write the checkpoint of the current step. A full disk fails the job in words: the half-
    written directory goes (atomic_dir), the previous checkpoints stay as they were."""
    step = trainer.state.global_step
    path = root / f"{CHECKPOINT_PREFIX}{step}"
    try:
        _write_checkpoint(trainer, path)
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


def _write_checkpoint(trainer: Trainer, path: Path) -> None:
    with atomic_dir(path) as tmp:
        trainer.task.save_checkpoint(tmp)
        faults.check_disk(trainer.state.global_step, trainer.config.fault_disk_full_from_step, str(tmp))
        torch.save({
            "format": STATE_FORMAT,
            "config": asdict(trainer.config),
            "loop": asdict(trainer.state),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "rng": capture_rng(),
        }, tmp / TRAINING_STATE_FILE)


def rotate_checkpoints(root: Path, keep_last: int, best_step: int | None, sink: TrainingSink) -> None:
    """Keep the last `keep_last` checkpoints and the best one; only the newest keeps its training
    state (the optimizer's moments are twice the weights): it is the one a resume reads. The
    others keep their weights (the best one is what the job exports)."""
    steps = [checkpoint_step(p) for p in list_checkpoints(root, resumable_only=False)]
    kept = set(steps[-max(1, keep_last):]) | ({best_step} if best_step is not None else set())
    newest = set(steps[-1:])
    for path in prune_checkpoints(root, keep_state=newest, keep_weights=kept - newest):
        sink.checkpoint_removed(path)


def load_training_state(path: Path) -> dict[str, Any] | None:
    state: dict[str, Any] = torch.load(path / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
    return state if state.get("format") == STATE_FORMAT else None


def newest_resumable(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose training state this version can resume, with that state."""
    for path in reversed(list_checkpoints(root)):
        saved = load_training_state(path)
        if saved is not None:
            return path, saved
    return None


def restore(trainer: Trainer, saved: dict[str, Any], checkpoint: Path, per_epoch: int) -> None:
    """Put back the weights, optimizer, schedule, scaler, loop state and RNG of a checkpoint."""
    trainer.task.load_checkpoint(checkpoint)
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    trainer.scaler.load_state_dict(saved["scaler"])
    trainer.state = state = LoopState(**saved["loop"])
    if state.gradient_checkpointing:
        set_gradient_checkpointing(trainer.model)
    restore_rng(saved["rng"])
    trainer.sink.event(
        "resumed", f"Resumed from the checkpoint at step {state.global_step} "
        f"(epoch {state.global_step / per_epoch:.2f}) with micro-batch {state.micro_batch_size} x "
        f"{trainer.grad_accum_steps}.",
        {"step": state.global_step, "checkpoint": str(checkpoint), "micro_batch_size": state.micro_batch_size,
         "grad_accum_steps": trainer.grad_accum_steps})
