"""The Celery app of the training worker: `celery -A worker.celery_app worker` starts one.

One training at a time per worker process, in the solo pool: CUDA does not survive a fork,
and a GPU holds one fine-tune at a time anyway. Start more workers for more GPUs.
"""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutting_down

from core.logging import quiet_libraries
from core.queue import TRAINING_QUEUE, make_celery
from core.settings import get_settings

quiet_libraries()  # before any task imports transformers: they read the switches at import

log = logging.getLogger("tuneserve.worker")

settings = get_settings()
app = make_celery(settings)
app.conf.update(
    include=["worker.tasks"],
    worker_pool="solo",
    worker_concurrency=1,
    task_queues=None,
    task_create_missing_queues=True,
)
app.conf.task_default_queue = TRAINING_QUEUE

_sweeper_stop = threading.Event()


@worker_ready.connect
def _start_lease_sweeper(**_: object) -> None:
    """Re-enqueue jobs whose worker died (no heartbeat for a lease), from this worker's start on.

    The embedded SQLite broker never redelivers a message whose consumer died, and Redis
    does so only after its visibility timeout: the sweep is what guarantees a killed job
    is resumed. It runs beside the solo pool's task in a daemon thread.
    """
    from worker.job.claim import sweep_forever

    thread = threading.Thread(
        target=sweep_forever, args=(_sweeper_stop,), name="tuneserve-lease-sweeper", daemon=True
    )
    thread.start()


@worker_shutting_down.connect
def _stop_lease_sweeper(**_: object) -> None:
    _sweeper_stop.set()


_health_stop = threading.Event()


@worker_ready.connect
def _start_health_beat(**_: object) -> None:
    """Touch the health file while the broker and database answer (see worker/job/health.py)."""
    if settings.worker_health_file is None:
        return
    from worker.job.health import beat_forever

    threading.Thread(target=beat_forever, name="tuneserve-health",
                     args=(settings.worker_health_file, _health_stop, settings.worker_health_interval_s),
                     daemon=True).start()


@worker_ready.connect
def _install_stop_handlers(**_: object) -> None:
    """A stop signal keeps the running job's work (worker/job/stop.py): installed once Celery's own
    handlers are, from the main thread, where Python runs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        log.warning("worker_ready outside the main thread: Celery's own stop handlers stay")
        return
    from worker.job.stop import install_handlers

    install_handlers()


@worker_shutting_down.connect
def _stop_health_beat(**_: object) -> None:
    _health_stop.set()
