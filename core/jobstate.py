"""A job's states and every change between them. Each change is one conditional UPDATE that
returns whether it applied, so two API requests, a redelivered message and a racing worker
settle in the database and never need a lock: the loser sees False and leaves the row alone.

    queued --claim--> running --finish--> succeeded | failed | cancelled
    queued --cancel_queued / fail_queued--> cancelled / failed   (no worker holds it)
    running --take_over--> running          (a new attempt, once the lease ran out)
    running --hand_back--> running          (lease cleared: the sweep queued it again)
    running --stop_to_queue--> queued       (its worker is stopping: the next one resumes it)
    failed | cancelled --requeue_to_resume--> queued

The functions take the caller's session and do not commit: a route writes the state and its
event in one transaction. Events are the caller's (their words depend on who asked).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from core.db import rows_updated
from core.tables import Job, utcnow


# Stored as its value in `jobs.state` (a plain string column: no migration, and psql shows words).
class JobState(StrEnum):
    """A job's state: queued, then running, then succeeded, failed or cancelled (a failed or
    cancelled job can be resumed)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# A job in these states holds a worker or waits for one: it may read its dataset and base model.
ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING)
# The attempt that ends a job writes one of these.
FINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
# A job that stopped short resumes from its last checkpoint; a succeeded one is done.
RESUMABLE_STATES = (JobState.FAILED, JobState.CANCELLED)


def _applied(session: Session, *where: Any, **values: Any) -> bool:
    return bool(rows_updated(session, update(Job).where(*where).values(**values)))


def claim(session: Session, *, job_id: str, token: str, now: datetime) -> bool:
    """queued → running, owned by the attempt `token` (a worker took the message)."""
    return _applied(session, Job.id == job_id, Job.state == JobState.QUEUED,
                    state=JobState.RUNNING, worker=token, heartbeat_at=now, started_at=now,
                    attempts=Job.attempts + 1)


def take_over(session: Session, *, job_id: str, token: str, now: datetime, lease: timedelta) -> bool:
    """running → running under a new attempt, only once the owner's lease ran out (or the sweep
    cleared it): a redelivered message of a job still alive elsewhere does not apply."""
    return _applied(session, Job.id == job_id, Job.state == JobState.RUNNING,
                    or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < now - lease),
                    worker=token, heartbeat_at=now, attempts=Job.attempts + 1)


def renew_lease(session: Session, *, job_id: str, token: str) -> bool:
    """The owner's heartbeat; False once another attempt owns the job or it ended."""
    return _applied(session, Job.id == job_id, Job.worker == token, Job.state == JobState.RUNNING,
                    heartbeat_at=utcnow())


def stop_to_queue(session: Session, *, job_id: str, token: str) -> bool:
    """running → queued by the attempt that owns it, because its worker is stopping."""
    return _applied(session, Job.id == job_id, Job.worker == token, Job.state == JobState.RUNNING,
                    state=JobState.QUEUED, worker=None, heartbeat_at=None)


def hand_back(session: Session, *, job_id: str, cutoff: datetime) -> bool:
    """A running job whose heartbeat is older than `cutoff` loses its lease. Clearing the
    heartbeat marks it as handed back (the sweep skips it next time) while the claim of the
    redelivered message still sees it as free to take over."""
    return _applied(session, Job.id == job_id, Job.state == JobState.RUNNING, Job.heartbeat_at < cutoff,
                    heartbeat_at=None)


def finish(session: Session, *, job_id: str, token: str, state: JobState, **fields: Any) -> bool:
    """running → a final state, written only by the attempt that still owns the job."""
    if state not in FINAL_STATES:
        raise ValueError(f"{state} is not a final state")
    return _applied(session, Job.id == job_id, Job.worker == token, Job.state == JobState.RUNNING,
                    state=state, finished_at=utcnow(), heartbeat_at=None, **fields)


def cancel_queued(session: Session, *, job_id: str) -> bool:
    """queued → cancelled: no worker holds the job, so it ends at once."""
    return _applied(session, Job.id == job_id, Job.state == JobState.QUEUED,
                    state=JobState.CANCELLED, finished_at=utcnow())


def request_cancel(session: Session, *, job_id: str) -> bool:
    """A running job is asked to stop; its worker moves it to cancelled within one optimizer step
    (the state itself changes in `finish`)."""
    return _applied(session, Job.id == job_id, Job.state == JobState.RUNNING, cancel_requested=True)


def fail_queued(session: Session, *, job_id: str, error: str, error_kind: str) -> bool:
    """queued → failed when the broker refused the message: no worker will ever see it."""
    return _applied(session, Job.id == job_id, Job.state == JobState.QUEUED, state=JobState.FAILED,
                    error=error, error_kind=error_kind, finished_at=utcnow())


def requeue_to_resume(session: Session, *, job_id: str) -> bool:
    """failed | cancelled → queued; the worker resumes it from its last checkpoint. Two resume
    requests queue it once."""
    return _applied(session, Job.id == job_id, Job.state.in_(RESUMABLE_STATES), state=JobState.QUEUED,
                    error=None, error_kind=None, finished_at=None, cancel_requested=False, worker=None,
                    heartbeat_at=None)
