"""Each state change applies from its own states only, and says whether it did: the database,
not the caller, decides who wins a race. SQLite and PostgreSQL both."""

from __future__ import annotations

from datetime import timedelta

import pytest

from core import jobstate
from core.db import session_scope
from core.jobstate import JobState
from core.tables import Job, utcnow

LEASE = timedelta(seconds=60)


def _job(state: JobState, **fields: object) -> str:
    with session_scope() as session:
        job = Job(base_model="m", task="single_label", state=state, **fields)
        session.add(job)
        session.flush()
        return job.id


def _row(job_id: str) -> Job:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_claim_takes_a_queued_job_once(settings) -> None:  # type: ignore[no-untyped-def]
    job_id = _job(JobState.QUEUED)
    with session_scope() as session:
        assert jobstate.claim(session, job_id=job_id, token="a", now=utcnow())
    with session_scope() as session:
        assert not jobstate.claim(session, job_id=job_id, token="b", now=utcnow())
    job = _row(job_id)
    assert (job.state, job.worker, job.attempts) == (JobState.RUNNING, "a", 1)
    assert job.started_at is not None


def test_take_over_waits_for_the_lease_to_run_out(settings) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    alive = _job(JobState.RUNNING, worker="a", heartbeat_at=now, attempts=1)
    dead = _job(JobState.RUNNING, worker="a", heartbeat_at=now - 2 * LEASE, attempts=1)
    handed_back = _job(JobState.RUNNING, worker="a", heartbeat_at=None, attempts=1)
    with session_scope() as session:
        assert not jobstate.take_over(session, job_id=alive, token="b", now=now, lease=LEASE)
        assert jobstate.take_over(session, job_id=dead, token="b", now=now, lease=LEASE)
        assert jobstate.take_over(session, job_id=handed_back, token="b", now=now, lease=LEASE)
    assert _row(alive).worker == "a"
    assert (_row(dead).worker, _row(dead).attempts) == ("b", 2)


def test_only_the_owner_renews_and_finishes(settings) -> None:  # type: ignore[no-untyped-def]
    job_id = _job(JobState.RUNNING, worker="a", heartbeat_at=utcnow())
    with session_scope() as session:
        assert not jobstate.renew_lease(session, job_id=job_id, token="b")
        assert not jobstate.finish(session, job_id=job_id, token="b", state=JobState.SUCCEEDED)
        assert jobstate.renew_lease(session, job_id=job_id, token="a")
        assert jobstate.finish(session, job_id=job_id, token="a", state=JobState.FAILED, error="boom",
                               error_kind="data")
    job = _row(job_id)
    assert (job.state, job.error, job.error_kind, job.heartbeat_at) == (JobState.FAILED, "boom", "data", None)
    assert job.finished_at is not None
    with session_scope() as session:  # a final state is final: a late duplicate changes nothing
        assert not jobstate.finish(session, job_id=job_id, token="a", state=JobState.SUCCEEDED)
        assert not jobstate.renew_lease(session, job_id=job_id, token="a")
    assert _row(job_id).state == JobState.FAILED


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED])
def test_finish_ends_a_running_job_in_each_final_state(settings, state: JobState) -> None:  # type: ignore[no-untyped-def]
    job_id = _job(JobState.RUNNING, worker="a", heartbeat_at=utcnow())
    with session_scope() as session:
        assert jobstate.finish(session, job_id=job_id, token="a", state=state)
    job = _row(job_id)
    assert (job.state, job.heartbeat_at) == (state, None) and job.finished_at is not None
    # Ended: no later state change that starts from running applies to it.
    with session_scope() as session:
        assert not jobstate.request_cancel(session, job_id=job_id)
        assert not jobstate.take_over(session, job_id=job_id, token="b", now=utcnow(), lease=LEASE)
    assert _row(job_id).state == state


@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.RUNNING])
def test_finish_refuses_a_state_that_is_not_final(settings, state: JobState) -> None:  # type: ignore[no-untyped-def]
    job_id = _job(JobState.RUNNING, worker="a", heartbeat_at=utcnow())
    with session_scope() as session, pytest.raises(ValueError, match="not a final state"):
        jobstate.finish(session, job_id=job_id, token="a", state=state)
    # Refused before any UPDATE: the job is still running, owned and unfinished.
    job = _row(job_id)
    assert (job.state, job.worker, job.finished_at) == (JobState.RUNNING, "a", None)


def test_hand_back_clears_only_a_stale_lease(settings) -> None:  # type: ignore[no-untyped-def]
    now = utcnow()
    alive = _job(JobState.RUNNING, worker="a", heartbeat_at=now)
    dead = _job(JobState.RUNNING, worker="a", heartbeat_at=now - 2 * LEASE)
    with session_scope() as session:
        assert not jobstate.hand_back(session, job_id=alive, cutoff=now - LEASE)
        assert jobstate.hand_back(session, job_id=dead, cutoff=now - LEASE)
        # Handed back once: the next sweep skips it.
        assert not jobstate.hand_back(session, job_id=dead, cutoff=now - LEASE)
    assert _row(alive).heartbeat_at is not None
    assert (_row(dead).state, _row(dead).heartbeat_at) == (JobState.RUNNING, None)


def test_cancel_ends_a_queued_job_and_asks_a_running_one(settings) -> None:  # type: ignore[no-untyped-def]
    queued, running = _job(JobState.QUEUED), _job(JobState.RUNNING, worker="a")
    done = _job(JobState.SUCCEEDED)
    with session_scope() as session:
        assert jobstate.cancel_queued(session, job_id=queued)
        assert not jobstate.cancel_queued(session, job_id=running)
        assert jobstate.request_cancel(session, job_id=running)
        assert not jobstate.request_cancel(session, job_id=queued)  # already cancelled
        assert not jobstate.cancel_queued(session, job_id=done)
        assert not jobstate.request_cancel(session, job_id=done)
    assert (_row(queued).state, _row(queued).finished_at is not None) == (JobState.CANCELLED, True)
    assert (_row(running).state, _row(running).cancel_requested) == (JobState.RUNNING, True)
    assert (_row(done).state, _row(done).cancel_requested) == (JobState.SUCCEEDED, False)


def test_fail_queued_leaves_a_claimed_job_alone(settings) -> None:  # type: ignore[no-untyped-def]
    queued, running = _job(JobState.QUEUED), _job(JobState.RUNNING, worker="a")
    with session_scope() as session:
        assert jobstate.fail_queued(session, job_id=queued, error="no broker", error_kind="environment")
        assert not jobstate.fail_queued(session, job_id=running, error="no broker", error_kind="environment")
    assert (_row(queued).state, _row(queued).error_kind) == (JobState.FAILED, "environment")
    assert (_row(running).state, _row(running).error) == (JobState.RUNNING, None)


def test_resume_queues_a_stopped_job_once(settings) -> None:  # type: ignore[no-untyped-def]
    failed = _job(JobState.FAILED, error="boom", error_kind="data", worker="a", finished_at=utcnow())
    cancelled = _job(JobState.CANCELLED, cancel_requested=True)
    succeeded, running = _job(JobState.SUCCEEDED), _job(JobState.RUNNING)
    with session_scope() as session:
        assert jobstate.requeue_to_resume(session, job_id=failed)
        assert not jobstate.requeue_to_resume(session, job_id=failed)
        assert jobstate.requeue_to_resume(session, job_id=cancelled)
        assert not jobstate.requeue_to_resume(session, job_id=succeeded)
        assert not jobstate.requeue_to_resume(session, job_id=running)
    job = _row(failed)
    assert (job.state, job.error, job.error_kind, job.worker, job.finished_at) == (
        JobState.QUEUED, None, None, None, None)
    assert (_row(cancelled).state, _row(cancelled).cancel_requested) == (JobState.QUEUED, False)
    assert _row(succeeded).state == JobState.SUCCEEDED
