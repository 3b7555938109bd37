"""Celery tasks: thin, like views. Ids travel through the queue, never rows or tensors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core import jobstate, store
from core.db import session_scope, write_with_retry
from core.jobspec import Hyperparameters
from core.jobstate import JobState
from core.queue import COMPARE_TASK, TRAIN_TASK
from core.settings import get_settings
from core.tables import Checkpoint, Dataset, Job, TunedModel, new_id
from worker.celery_app import app
from worker.errors import TrainingError, classify
from worker.recovery import LeaseKeeper, claim_job, new_attempt_token
from worker.sink import SqlSink, add_event
from worker.tensorboard import TENSORBOARD_DIRNAME

log = logging.getLogger("tuneserve.worker.tasks")


@app.task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True)
def train(job_id: str) -> None:
    """Run (or resume) one fine-tuning job to a final state."""
    token = new_attempt_token()
    claim = claim_job(job_id, token)
    if claim is None:
        log.info("job %s: not claimable (finished, cancelled or alive elsewhere); delivery dropped", job_id)
        return
    settings = get_settings()
    with LeaseKeeper(job_id, token, settings.heartbeat_interval_s) as lease:
        sink = SqlSink(job_id, lease, tensorboard_dir=store.job_dir(settings.models_dir, job_id)
                       / TENSORBOARD_DIRNAME, cancel_check_interval_s=settings.cancel_check_interval_s)
        if claim == "taken_over":
            sink.event("attempt", f"Worker {token} took over the job; it resumes from its last checkpoint.")
        else:
            sink.event("claimed", f"Worker {token} took the job from the queue.")
        try:
            outcome, fields = _run(job_id, sink)
        except Exception as exc:
            kind, message = classify(exc, job_id)
            outcome, fields = JobState.FAILED, {"error": message, "error_kind": kind}
            log.exception("job %s failed (%s)", job_id, kind)
        finally:
            sink.close()
        if lease.lease_lost.is_set():
            log.warning("job %s: lease lost to another worker; this attempt leaves the job to it", job_id)
            return
        # The row's step and progress are written throttled while training: the last figures
        # go in now, so the job row and its metrics agree on where it ended.
        fields = {**sink.last_progress(), **fields}
        _retain_checkpoints(job_id, outcome)
    _finish(job_id, token, outcome, **fields)


def _base_model_source(session: Session, job: Job) -> str | None:
    """What from_pretrained loads for the job's base model: a tuned model's directory, the
    bundled model's path, or the hub name / local path as given. None when the tuned model
    it names was deleted."""
    if job.base_model_id:
        tuned = session.get(TunedModel, job.base_model_id)
        return str(tuned.path) if tuned is not None else None
    return store.resolve_base_model(job.base_model)


def _retain_checkpoints(job_id: str, outcome: JobState) -> None:
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


def _run(job_id: str, sink: SqlSink) -> tuple[JobState, dict[str, Any]]:
    """Build the job's TrainingTask through its task family and run the loop; returns the final state."""
    from worker.config import TrainConfig
    from worker.families import family_for
    from worker.loop import run_training

    settings = get_settings()
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        if dataset is None:
            return JobState.FAILED, {"error": "The job's dataset was deleted before the job ran; upload "
                                     "the data again and start a new job.", "error_kind": "data"}
        base_model_path = _base_model_source(session, job)
        if base_model_path is None:
            raise TrainingError(f"Base model {job.base_model_id} was deleted before the job ran; "
                                "start the job again from another model.")
        hp = Hyperparameters.model_validate(job.hyperparameters)
        dataset_dir, labels, task = Path(dataset.storage_path), list(dataset.labels), dataset.task

    family = family_for(task)
    config = TrainConfig.from_hyperparameters(hp, settings)
    training_task = family.build_training_task(dataset_dir, labels, task, base_model_path, config)
    for kind, message, data in family.setup_events(training_task, config):
        sink.event(kind, message, data)
    result = run_training(training_task, config, store.job_dir(settings.models_dir, job_id), sink)
    if result.cancelled:
        return JobState.CANCELLED, {}
    checkpoint = result.best_checkpoint if hp.load_best_model_at_end and result.best_checkpoint else None
    checkpoint = checkpoint or result.last_checkpoint
    if checkpoint is None:
        return JobState.FAILED, {"error": "Training ended without a checkpoint to export (no optimizer "
                                 "step ran).", "error_kind": "bug"}
    model_id = _register_model(job_id, Path(checkpoint), result, labels, task, hp)
    sink.event("model_ready", f"Tuned model {model_id} is ready to serve.", {"model_id": model_id,
               "checkpoint": str(checkpoint)})
    _compare_quietly(job_id, task, model_id, sink)
    return JobState.SUCCEEDED, {"model_id": model_id, "progress": 1.0}


def _compare_quietly(job_id: str, task: str, model_id: str, sink: SqlSink) -> None:
    """The task family's comparison is part of every job, but a failure to make it must not fail
    a job whose model is already trained and registered."""
    from worker.families import family_for

    try:
        family_for(task).compare(job_id, model_id)
    except Exception as exc:
        log.exception("job %s: comparison failed", job_id)
        sink.event("comparison_failed", f"The comparison could not be made ({exc}); "
                   f"POST /jobs/{job_id}/compare retries it.")


def _register_model(job_id: str, checkpoint: Path, result: Any, labels: list[str], task: str,
                    hp: Hyperparameters) -> str:
    from worker.export import export_tuned_model
    from worker.families import family_for

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
                labels=labels, thresholds=meta.get("thresholds"), metrics=_flat_metrics(metrics),
                max_seq_length=int(meta["max_seq_length"]), path=str(destination),
                size_bytes=store.dir_size_bytes(destination),
            ))
            session.flush()
        except BaseException:
            shutil.rmtree(destination, ignore_errors=True)
            raise
    return model_id


def _flat_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    from worker.sink import _json_safe

    return _json_safe(metrics)


def _finish(job_id: str, token: str, state: JobState, **fields: Any) -> None:
    done = write_with_retry(lambda session: jobstate.finish(session, job_id=job_id, token=token, state=state,
                                                            **fields), what=f"job {job_id}: final state")
    if not done:
        log.warning("job %s: final state %s not recorded (no longer owned by this attempt)", job_id, state)
        return
    message = {JobState.SUCCEEDED: "The job succeeded.",
               JobState.CANCELLED: f"The job was cancelled at step {fields.get('step')}.",
               JobState.FAILED: f"The job failed: {fields.get('error')}"}[state]
    add_event(job_id, state, message, {"step": fields.get("step"), "error_kind": fields.get("error_kind")}
              if state != JobState.SUCCEEDED else {"step": fields.get("step")})


@app.task(name=COMPARE_TASK, acks_late=True)
def compare(job_id: str) -> None:
    """The task family's comparison on the held-out splits (classification: the tuned model beside
    the majority and TF-IDF baselines), stored on the job."""
    from worker.families import family_for

    with session_scope() as session:
        job = session.get(Job, job_id)
        task = job.task if job is not None else None
    if task is None:
        raise ValueError(f"job {job_id} does not exist")
    family_for(task).compare(job_id)
