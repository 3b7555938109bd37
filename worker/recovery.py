"""Job ownership: claiming a job, keeping its lease alive, and handing back dead workers' jobs.

A running job is owned by the attempt whose token is in `jobs.worker`, for as long as that
attempt writes `heartbeat_at` at least once per `job_lease_s`. Every state change is a
conditional UPDATE, so duplicate deliveries and racing workers settle in the database.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

from sqlalchemy import and_, or_, select, update

from core.db import rows_updated, session_scope
from core.queue import TRAIN_TASK, enqueue
from core.settings import get_settings
from core.tables import Job, JobEvent, utcnow

log = logging.getLogger("tuneserve.worker.recovery")


def new_attempt_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim_job(job_id: str, token: str) -> str | None:
    """Move the job to running for this attempt. Returns 'started', 'taken_over', or None
    when the job is not ours to run (finished, cancelled, or alive in another worker)."""
    lease = timedelta(seconds=get_settings().job_lease_s)
    now = utcnow()
    with session_scope() as session:
        fresh = rows_updated(session, update(Job)
            .where(Job.id == job_id, Job.state == "queued")
            .values(state="running", worker=token, heartbeat_at=now, started_at=now,
                    attempts=Job.attempts + 1))
        if fresh:
            return "started"
        stale = rows_updated(session, update(Job)
            .where(
                Job.id == job_id,
                Job.state == "running",
                or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < now - lease),
            )
            .values(worker=token, heartbeat_at=now, attempts=Job.attempts + 1))
        return "taken_over" if stale else None


def heartbeat(job_id: str, token: str) -> tuple[bool, bool]:
    """Renew the lease. Returns (still_owner, cancel_requested)."""
    with session_scope() as session:
        owned = rows_updated(session, update(Job)
            .where(Job.id == job_id, Job.worker == token, Job.state == "running")
            .values(heartbeat_at=utcnow()))
        cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return bool(owned), bool(cancel)


class LeaseKeeper:
    """A daemon thread that renews the job's lease and notices cancel requests, so liveness
    does not depend on how long one optimizer step (or loading a model) takes."""

    def __init__(self, job_id: str, token: str, interval_s: float) -> None:
        self.job_id, self.token, self.interval_s = job_id, token, interval_s
        self.cancel_requested = threading.Event()
        self.lease_lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                owned, cancel = heartbeat(self.job_id, self.token)
            except Exception:  # a database hiccup must not kill training; the next beat retries
                log.warning("heartbeat for %s failed", self.job_id, exc_info=True)
                continue
            if cancel:
                self.cancel_requested.set()
            if not owned:
                self.lease_lost.set()
                return


def requeue_dead_jobs() -> list[str]:
    """Hand every running job whose heartbeat is older than a lease back to the queue."""
    settings = get_settings()
    cutoff = utcnow() - timedelta(seconds=settings.job_lease_s)
    requeued: list[str] = []
    with session_scope() as session:
        job_ids = session.scalars(
            select(Job.id).where(and_(Job.state == "running", Job.heartbeat_at < cutoff))
        ).all()
        for job_id in job_ids:
            # Clearing the heartbeat marks it as handed back (the sweep skips it next time)
            # while the claim of the redelivered task still sees it as free to take over.
            done = rows_updated(session, update(Job)
                .where(Job.id == job_id, Job.state == "running", Job.heartbeat_at < cutoff)
                .values(heartbeat_at=None))
            if done:
                session.add(JobEvent(
                    job_id=job_id, kind="worker_lost",
                    message=f"No heartbeat for {settings.job_lease_s:.0f} s: the worker running this job "
                    "is gone. The job was queued again and resumes from its last checkpoint.",
                ))
                requeued.append(job_id)
    for job_id in requeued:
        enqueue(TRAIN_TASK, job_id)
        log.warning("job %s lost its worker; queued again to resume from its last checkpoint", job_id)
    return requeued


def sweep_forever(stop: threading.Event) -> None:
    # A quarter of the lease: a dead worker's job moves within 1.25 x job_lease_s (see settings).
    interval_s = max(0.5, get_settings().job_lease_s / 4)
    while True:
        try:
            requeue_dead_jobs()
        except Exception:
            log.warning("lease sweep failed; retrying in %.0f s", interval_s, exc_info=True)
        if stop.wait(interval_s):
            return
