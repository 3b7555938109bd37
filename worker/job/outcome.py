"""How a job's attempt ends: the tuned model registered, the checkpoints it no longer needs
pruned, the comparison made, and the final state written together with its event."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core import jobstate, store
from core.db import session_scope, write_with_retry
from core.events import event_row, json_safe
from core.jobspec import Hyperparameters
from core.jobstate import JobState
from core.settings import get_settings
from core.tables import Checkpoint, Job, TunedModel, new_id
from worker.families import family_for
from worker.job.export import export_tuned_model
from worker.job.sink import SqlSink
from worker.training.protocols import TrainResult

log = logging.getLogger("tuneserve.worker.job.outcome")


def register_model(job_id: str, checkpoint: Path, result: TrainResult, labels: list[str], task: str,
                   hp: Hyperparameters) -> str:
    """Export the checkpoint as a servable model directory and add its row; the files go again
    if the row cannot be written."""
    settings = get_settings()
    model_id = new_id("mdl")
    destination = store.model_dir(settings.models_dir, model_id)
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        meta = family_for(task).model_meta(checkpoint, task, labels, hp, job.base_model, job_id)
        export_tuned_model(checkpoint, destination, meta)
        try:
            metrics = result.best_metrics or result.final_metrics or {}
            session.add(TunedModel(
                id=model_id, tenant_id=job.tenant_id, job_id=job_id, base_model=job.base_model, task=task,
                labels=labels, thresholds=meta.get("thresholds"), metrics=json_safe(metrics),
                max_seq_length=int(meta["max_seq_length"]), path=str(destination),
                size_bytes=store.dir_size_bytes(destination),
            ))
            session.flush()
        except BaseException:
            shutil.rmtree(destination, ignore_errors=True)
            raise
    return model_id


def compare_quietly(job_id: str, task: str, model_id: str, sink: SqlSink) -> None:
    """The task family's comparison is part of every job, but a failure to make it must not fail
    a job whose model is already trained and registered."""
    try:
        family_for(task).compare(job_id, model_id)
    except Exception as exc:
        log.exception("job %s: comparison failed", job_id)
        sink.event("comparison_failed", f"The comparison could not be made ({exc}); "
                   f"POST /jobs/{job_id}/compare retries it.")


def retain_checkpoints(job_id: str, outcome: JobState) -> None:
    """What a finished job keeps on disk. Running, it keeps the best and the last k checkpoints
    with their optimizer state (twice the weights). Finished: the newest checkpoint with its
    state (what a resume or a continued run needs) and, after a failure or a cancel, the best
    one's weights (exported when a resumed run ends); after a success, its tuned model is a
    copy, so only `keep_checkpoints_after_success` newest ones stay. A failure here must not
    change the job's outcome: the files are only surplus."""
    settings = get_settings()
    root = store.checkpoints_dir(settings.models_dir, job_id)
    try:
        with session_scope() as session:
            rows = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)).all()
            best = {row.step for row in rows if row.is_best}
        on_disk = [store.checkpoint_step(p) for p in store.list_checkpoints(root, resumable_only=False)]
        newest = sorted(on_disk, reverse=True)
        if outcome == JobState.SUCCEEDED:
            keep_state = set(newest[:1])
            keep_weights = set(newest[:max(0, settings.keep_checkpoints_after_success)])
            if settings.keep_checkpoints_after_success < 1:
                keep_state = set()
        else:
            keep_state = {store.checkpoint_step(p) for p in store.list_checkpoints(root)[-1:]}
            keep_weights = best
        removed = store.prune_checkpoints(root, keep_state=keep_state, keep_weights=keep_weights - keep_state)
        with session_scope() as session:
            for path in removed:
                session.execute(update(Checkpoint)
                                .where(Checkpoint.job_id == job_id, Checkpoint.path == str(path))
                                .values(available=False))
        if removed:
            log.info("job %s: %d checkpoint(s) removed at the end, %s kept", job_id, len(removed),
                     sorted(keep_state | keep_weights))
    except Exception:
        log.warning("job %s: pruning its checkpoints failed; they stay on disk", job_id, exc_info=True)


def final_message(state: JobState, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    step = fields.get("step")
    if state == JobState.SUCCEEDED:
        return "The job succeeded.", {"step": step}
    if state == JobState.CANCELLED:
        when = f"at step {step}" if step else "before its first optimizer step"
        return f"The job was cancelled {when}.", {"step": step}
    return f"The job failed: {fields.get('error')}", {"step": step, "error_kind": fields.get("error_kind")}


def record_final_state(job_id: str, token: str, state: JobState, **fields: Any) -> bool:
    """The final state and its event in ONE transaction: a process that dies here leaves either
    both (the job is over) or neither (the job is still running, and the lease sweep resumes it).
    Written only by the attempt that still owns the job; False when it no longer does."""
    message, data = final_message(state, fields)

    def write(session: Session) -> bool:
        if not jobstate.finish(session, job_id=job_id, token=token, state=state, **fields):
            return False
        session.add(event_row(job_id, str(state), message, data))
        return True

    done = write_with_retry(write, what=f"job {job_id}: final state")
    if not done:
        log.warning("job %s: final state %s not recorded (no longer owned by this attempt)", job_id, state)
    return done
