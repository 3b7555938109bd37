"""Job ownership on a real database and broker: the embedded SQLite broker beside SQLite, the
Redis at 127.0.0.1:6379 beside PostgreSQL, as they are deployed. A claim, the lease a live
LeaseKeeper thread renews, the takeover once it lapses, and the sweep that queues a dead
worker's job again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import select

from core.db import session_scope
from core.jobstate import JobState
from core.queue import TRAIN_TASK
from core.settings import get_settings
from core.tables import Job, JobEvent, utcnow
from tests.conftest import REDIS_URL, read_training_queue
from worker.job.claim import (
    LeaseKeeper,
    claim_job,
    heartbeat,
    new_attempt_token,
    requeue_dead_jobs,
    sweep_forever,
)

LEASE_S = 0.6  # short, so a real lapse takes well under a second; beats come every 0.05 s


@pytest.fixture
def broker(settings: Any, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The broker that goes with the database, empty, and a short lease."""
    from core.queue import _client

    if database_url.startswith("postgresql"):
        redis.Redis.from_url(REDIS_URL).flushdb()
        monkeypatch.setenv("TUNESERVE_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("TUNESERVE_JOB_LEASE_S", str(LEASE_S))
    get_settings.cache_clear()
    _client.cache_clear()
    yield get_settings().broker_url
    if database_url.startswith("postgresql"):
        redis.Redis.from_url(REDIS_URL).flushdb()


def _job(state: JobState = JobState.QUEUED, **fields: Any) -> str:
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


def _wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _lapse(job_id: str) -> None:
    """The owner stopped beating two leases ago (as a SIGKILLed worker does)."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.heartbeat_at = utcnow() - timedelta(seconds=2 * LEASE_S)


def test_a_queued_job_is_claimed_once(broker: str) -> None:
    job_id = _job()
    first, second = new_attempt_token(), new_attempt_token()
    assert first != second
    assert claim_job(job_id, first) == "started"
    # A duplicate delivery while the first attempt is alive is dropped.
    assert claim_job(job_id, second) is None
    job = _row(job_id)
    assert (job.state, job.worker, job.attempts) == (JobState.RUNNING, first, 1)
    assert job.heartbeat_at is not None and job.started_at is not None


def test_a_finished_or_missing_job_is_not_claimed(broker: str) -> None:
    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        assert claim_job(_job(state), new_attempt_token()) is None
    assert claim_job("job_does_not_exist", new_attempt_token()) is None


def test_heartbeat_renews_the_owner_only_and_reports_a_cancel(broker: str) -> None:
    job_id = _job()
    owner = new_attempt_token()
    claim_job(job_id, owner)
    _lapse(job_id)
    assert heartbeat(job_id, owner) == (True, False)
    assert _row(job_id).heartbeat_at > utcnow() - timedelta(seconds=LEASE_S)  # type: ignore[operator]
    assert heartbeat(job_id, "someone-else")[0] is False
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.cancel_requested = True
    assert heartbeat(job_id, owner) == (True, True)


def test_a_live_lease_keeper_holds_the_job_and_a_lapsed_lease_is_taken_over(broker: str) -> None:
    job_id = _job()
    owner, other = new_attempt_token(), new_attempt_token()
    assert claim_job(job_id, owner) == "started"
    claimed_at = _row(job_id).heartbeat_at
    with LeaseKeeper(job_id, owner, interval_s=0.05) as keeper:
        # Three leases long, every attempt to take the job over fails: the beats keep it.
        until = time.monotonic() + 3 * LEASE_S
        while time.monotonic() < until:
            assert claim_job(job_id, other) is None
            time.sleep(0.05)
        assert _row(job_id).heartbeat_at > claimed_at  # type: ignore[operator]
        assert not keeper.lease_lost.is_set() and not keeper.cancel_requested.is_set()
    # The keeper stopped (its worker is gone): once a lease passes, another attempt takes over.
    assert _wait_for(lambda: claim_job(job_id, other), "the takeover") == "taken_over"
    job = _row(job_id)
    assert (job.state, job.worker, job.attempts) == (JobState.RUNNING, other, 2)


def test_the_lease_keeper_sees_a_cancel_and_a_lost_lease(broker: str) -> None:
    job_id = _job()
    owner = new_attempt_token()
    claim_job(job_id, owner)
    with LeaseKeeper(job_id, owner, interval_s=0.05) as keeper:
        with session_scope() as session:
            job = session.get(Job, job_id)
            assert job is not None
            job.cancel_requested = True
        assert keeper.cancel_requested.wait(5)
        assert not keeper.lease_lost.is_set()
        # Another attempt owns it now (the lease lapsed and the redelivery took over).
        _lapse(job_id)
        assert claim_job(job_id, new_attempt_token()) == "taken_over"
        assert keeper.lease_lost.wait(5)
        # A keeper that lost its lease stops beating: it writes nothing over the new owner's.
        _wait_for(lambda: not keeper._thread.is_alive(), "the keeper's thread to end")


def test_the_sweep_queues_a_dead_workers_job_again_once(broker: str) -> None:
    dead, alive = _job(), _job()
    queued, finished = _job(), _job(JobState.SUCCEEDED)
    alive_token = new_attempt_token()
    claim_job(dead, new_attempt_token())
    claim_job(alive, alive_token)
    _lapse(dead)
    with LeaseKeeper(alive, alive_token, interval_s=0.05):  # the live worker beats throughout
        assert requeue_dead_jobs() == [dead]
        # Handed back: still running (its checkpoints are where it resumes), no heartbeat, and
        # its message is on the broker for the next worker.
        assert (_row(dead).state, _row(dead).heartbeat_at) == (JobState.RUNNING, None)
        assert (_row(alive).state, _row(queued).state, _row(finished).state) == (
            JobState.RUNNING, JobState.QUEUED, JobState.SUCCEEDED)
        with session_scope() as session:
            events = session.scalars(select(JobEvent).where(JobEvent.kind == "worker_lost")).all()
            assert [e.job_id for e in events] == [dead]
            assert f"No heartbeat for {LEASE_S:.0f} s" in events[0].message
        messages = read_training_queue(broker)
        assert [(h["task"], body[0]) for h, body in messages] == [(TRAIN_TASK, [dead])]

        # The next sweep finds nothing to do; the redelivered message is claimed as a takeover.
        assert requeue_dead_jobs() == []
        assert read_training_queue(broker, timeout_s=0.5) == []
        assert claim_job(dead, new_attempt_token()) == "taken_over"
        assert _row(dead).attempts == 2


def test_sweep_forever_requeues_while_it_runs_and_stops_when_asked(broker: str) -> None:
    dead = _job()
    claim_job(dead, new_attempt_token())
    _lapse(dead)
    stop = threading.Event()
    sweeper = threading.Thread(target=sweep_forever, args=(stop,), daemon=True)
    sweeper.start()
    try:
        _wait_for(lambda: _row(dead).heartbeat_at is None, "the sweep to hand the job back")
    finally:
        stop.set()
        sweeper.join(timeout=5)
    assert not sweeper.is_alive()
    assert [body[0] for _, body in read_training_queue(broker)] == [[dead]]
