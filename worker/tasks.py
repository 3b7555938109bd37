"""Celery tasks: thin, like views. Ids travel through the queue, never rows or tensors.

A Celery task here is the unit the broker delivers (train, compare); it is not a dataset's task
(single_label, multi_label, chat) nor a TrainingTask (what the loop trains).
"""

from __future__ import annotations

import logging
from pathlib import Path

from core import store
from core.db import session_scope
from core.jobstate import JobState
from core.queue import COMPARE_TASK, TRAIN_TASK, enqueue
from core.settings import get_settings
from core.tables import Job
from worker.celery_app import app
from worker.job import stop
from worker.job.claim import LeaseKeeper, attempt_number, claim_job, new_attempt_token
from worker.job.errors import classify
from worker.job.outcome import record_final_state, retain_checkpoints
from worker.job.search import trial_ended
from worker.job.sink import SqlSink
from worker.job.tensorboard import TENSORBOARD_DIRNAME

log = logging.getLogger("tuneserve.worker.tasks")


@app.task(name=TRAIN_TASK, acks_late=True, reject_on_worker_lost=True)
def train(job_id: str) -> None:
    """Run (or resume) one fine-tuning job to a final state."""
    from worker.job.run import run_job  # training code loads in the worker process only

    if stop.stop_requested():
        # This worker is stopping: the message goes back for the next worker, the job untouched.
        enqueue(TRAIN_TASK, job_id)
        return
    token = new_attempt_token()
    claim = claim_job(job_id, token)
    if claim is None:
        log.info("job %s: not claimable (finished, cancelled or alive elsewhere); delivery dropped", job_id)
        return
    settings = get_settings()
    checkpoints = store.checkpoints_dir(settings.models_dir, job_id)
    with LeaseKeeper(job_id, token, settings.heartbeat_interval_s) as lease:
        sink = SqlSink(job_id, lease, tensorboard_dir=store.job_dir(settings.models_dir, job_id)
                       / TENSORBOARD_DIRNAME, cancel_check_interval_s=settings.cancel_check_interval_s,
                       earlier_attempts=attempt_number(job_id) > 1)
        sink.event("attempt" if claim == "taken_over" else "claimed",
                   _claim_message(claim, token, checkpoints))
        stop.running(job_id, token)
        try:
            outcome, fields = run_job(job_id, sink)
        except Exception as exc:
            kind, message = classify(exc, job_id)
            outcome, fields = JobState.FAILED, {"error": message, "error_kind": kind}
            log.exception("job %s failed (%s)", job_id, kind)
        finally:
            sink.close()
        if lease.lease_lost.is_set():
            log.warning("job %s: lease lost to another worker; this attempt leaves the job to it", job_id)
            stop.done()
            return
        # The row's step and progress are written throttled while training: the last figures
        # go in now, so the job row and its metrics agree on where it ended.
        fields = {**sink.last_progress(), **fields}
        if outcome == JobState.CANCELLED and stop.stop_requested() and not lease.cancel_requested.is_set():
            # The worker is stopping, nobody cancelled: the job waits for the next worker.
            step = fields.get("step")
            newest = store.latest_resumable_checkpoint(checkpoints)
            stop.hand_back(job_id, token, step, checkpointed=newest is not None and newest[0] == step)
            stop.done()
            return
        retain_checkpoints(job_id, outcome)
    stop.done()
    if record_final_state(job_id, token, outcome, **fields):
        trial_ended(job_id)  # a search's trial: tell the study, queue the next trials


def _claim_message(claim: str, token: str, checkpoints: Path) -> str:
    newest = store.latest_resumable_checkpoint(checkpoints)
    where = (f"resumes from step {newest[0]}, its newest checkpoint" if newest is not None
             else "starts from the beginning (no checkpoint was written yet)")
    if claim == "taken_over":
        return f"Worker {token} took over the job; it {where}."
    return f"Worker {token} took the job from the queue; it {where}."


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
