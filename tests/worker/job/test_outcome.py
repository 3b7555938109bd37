"""A job's final state and its final event are one transaction: both land, or neither does (a
process that dies between them must not leave a finished job with no final event). SQLite and
PostgreSQL both."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from core.db import get_engine, session_scope
from core.jobstate import JobState
from core.tables import Job, JobEvent, utcnow
from worker.job.outcome import record_final_state


def _running_job(token: str) -> str:
    with session_scope() as session:
        job = Job(base_model="m", task="single_label", state=JobState.RUNNING, worker=token,
                  heartbeat_at=utcnow(), attempts=1)
        session.add(job)
        session.flush()
        return job.id


def _state_and_events(job_id: str) -> tuple[str, list[tuple[str, str]]]:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        events = session.execute(select(JobEvent.kind, JobEvent.message)
                                 .where(JobEvent.job_id == job_id)).all()
        return job.state, [(kind, message) for kind, message in events]


def test_the_final_state_and_its_event_land_together(settings) -> None:  # type: ignore[no-untyped-def]
    job_id = _running_job("attempt-a")
    assert record_final_state(job_id, "attempt-a", JobState.FAILED, error="The disk is full.",
                              error_kind="environment", step=7)
    state, events = _state_and_events(job_id)
    assert state == JobState.FAILED
    assert events == [("failed", "The job failed: The disk is full.")]


def test_an_event_that_cannot_be_written_leaves_the_job_running(settings) -> None:  # type: ignore[no-untyped-def]
    """The event's INSERT fails inside the transaction (its table is gone): the state UPDATE before
    it is rolled back with it, so the job is still running and the lease sweep can resume it."""
    job_id = _running_job("attempt-a")
    with get_engine().begin() as conn:
        conn.execute(text("DROP TABLE job_events"))
    with pytest.raises(Exception, match="job_events"):
        record_final_state(job_id, "attempt-a", JobState.SUCCEEDED, step=10, progress=1.0)
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.state, job.finished_at, job.progress) == (JobState.RUNNING, None, 0.0)


def test_an_attempt_that_lost_the_job_writes_neither(settings) -> None:  # type: ignore[no-untyped-def]
    job_id = _running_job("attempt-b")
    assert not record_final_state(job_id, "attempt-a", JobState.SUCCEEDED, step=3)
    assert _state_and_events(job_id) == (JobState.RUNNING, [])
