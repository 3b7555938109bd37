"""Job ownership: claiming a job, keeping its lease alive, and handing back dead workers' jobs.

A running job is owned by the attempt whose token is in `jobs.worker`, for as long as that
attempt writes `heartbeat_at` at least once per `job_lease_s`. Every state change is a
conditional UPDATE (core/jobstate.py), so duplicate deliveries and racing workers settle in the
database.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from datetime import timedelta

from sqlalchemy import and_, select

from core import jobstate
from core.db import session_scope
from core.jobstate import JobState
from core.queue import TRAIN_TASK, enqueue
from core.settings import get_settings
from core.tables import Job, JobEvent, utcnow

log = logging.getLogger("tuneserve.worker.job.claim")


def new_attempt_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claim_job(job_id: str, token: str) -> str | None:
    """Move the job to running for this attempt. Returns 'started', 'taken_over', or None
    when the job is not ours to run (finished, cancelled, or alive in another worker)."""
    lease = timedelta(seconds=get_settings().job_lease_s)
    now = utcnow()
    with session_scope() as session:
        if jobstate.claim(session, job_id=job_id, token=token, now=now):
            return "started"
        if jobstate.take_over(session, job_id=job_id, token=token, now=now, lease=lease):
            return "taken_over"
        return None


def attempt_number(job_id: str) -> int:
    """Which attempt at the job this is (1 for the first claim)."""
    with session_scope() as session:
        return int(session.scalar(select(Job.attempts).where(Job.id == job_id)) or 0)


def heartbeat(job_id: str, token: str) -> tuple[bool, bool]:
    """Renew the lease. Returns (still_owner, cancel_requested)."""
    with session_scope() as session:
        owned = jobstate.renew_lease(session, job_id=job_id, token=token)
        cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return owned, bool(cancel)


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
            select(Job.id).where(and_(Job.state == JobState.RUNNING, Job.heartbeat_at < cutoff))
        ).all()
        for job_id in job_ids:
            if jobstate.hand_back(session, job_id=job_id, cutoff=cutoff):
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
