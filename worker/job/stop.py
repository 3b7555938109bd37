"""Stopping a worker without losing work.

The first SIGINT or SIGTERM (Ctrl-C, `docker compose stop`, the supervisor of `tuneserve up`)
asks the running job to stop at its next optimizer step: the loop writes a checkpoint there and
the job goes back to `queued`, with an event saying why, and a message for the next worker; then
the worker exits. The next start resumes it at that step. A second signal, or SIGQUIT, stops at
once: the job is handed back the same way (without a new checkpoint) and resumes from its last
one. Celery's own handlers are replaced because, in the solo pool, training runs in the main
thread that its cold shutdown would cancel mid-step (a failed job, not a stopped one).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from types import FrameType

from core import jobstate
from core.db import session_scope
from core.queue import TRAIN_TASK, enqueue
from core.tables import JobEvent

log = logging.getLogger("tuneserve.worker.job.stop")

# How long a stop at once waits for the job to be handed back before the process exits anyway
# (the lease sweep then resumes the job within 1.25 x TUNESERVE_JOB_LEASE_S).
HAND_BACK_TIMEOUT_S = 10.0
EX_STOPPED = 0


@dataclass
class _Current:
    job_id: str | None = None
    token: str | None = None


_current = _Current()
_stop_requested = threading.Event()
_lock = threading.Lock()


def running(job_id: str, token: str) -> None:
    """The job this process is training now (what a stop hands back)."""
    with _lock:
        _current.job_id, _current.token = job_id, token


def done() -> None:
    with _lock:
        _current.job_id = _current.token = None


def stop_requested() -> bool:
    """Asked by the sink after every optimizer step."""
    return _stop_requested.is_set()


def hand_back(job_id: str, token: str, step: int | None, *, checkpointed: bool) -> bool:
    """running -> queued for the next worker, with an event saying where it resumes, and a
    message on the queue for it. False when this attempt no longer owns the job."""
    where = (f"resumes at step {step}, where it stopped" if checkpointed and step
             else "resumes from its last checkpoint (or from the start if it has none)")
    message = f"The worker was stopped; the job is queued again and {where}."
    with session_scope() as session:
        if not jobstate.stop_to_queue(session, job_id=job_id, token=token):
            return False
        session.add(JobEvent(job_id=job_id, kind="stopped", message=message,
                             data={"step": step, "checkpointed": checkpointed}))
    enqueue(TRAIN_TASK, job_id)
    log.warning("job %s: %s", job_id, message)
    return True


def _stop_at_once() -> None:
    with _lock:
        job_id, token = _current.job_id, _current.token
    if job_id is not None and token is not None:
        # From a thread: the main thread may be inside a database write this must not wait on.
        worker = threading.Thread(target=_hand_back_quietly, args=(job_id, token), daemon=True)
        worker.start()
        worker.join(HAND_BACK_TIMEOUT_S)
    os._exit(EX_STOPPED)


def _hand_back_quietly(job_id: str, token: str) -> None:
    try:
        hand_back(job_id, token, None, checkpointed=False)
    except Exception:
        log.warning("job %s: could not hand the job back; the lease sweep will", job_id, exc_info=True)


def _say(message: str) -> None:
    try:
        sys.__stderr__.write(f"worker: {message}\n") if sys.__stderr__ else None
    except OSError:  # stderr may be a closed pipe: the stop must go on regardless
        pass


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    if signum == signal.SIGQUIT or _stop_requested.is_set():
        _say("stopping at once; the running job resumes from its last checkpoint")
        _stop_at_once()
        return
    _stop_requested.set()
    _say("stopping after the current optimizer step (a checkpoint is written there); "
         "signal again to stop at once")
    from celery.worker import state

    state.should_stop = EX_STOPPED  # Celery's warm shutdown: exit once the task has returned


def install_handlers() -> None:
    """Replace Celery's shutdown handlers (call in the worker's main thread once it is ready)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, _on_signal)
