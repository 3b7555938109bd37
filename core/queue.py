"""Enqueue work for the worker by task name, so the API never imports training code."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from core.settings import Settings, get_settings

TRAIN_TASK = "tuneserve.train"
COMPARE_TASK = "tuneserve.compare"
TRAINING_QUEUE = "training"


def make_celery(settings: Settings) -> Celery:
    """The Celery app both sides share: same broker, same queue, same delivery guarantees."""
    app = Celery("tuneserve", broker=settings.broker_url)
    app.conf.update(
        task_default_queue=TRAINING_QUEUE,
        task_routes={"tuneserve.*": {"queue": TRAINING_QUEUE}},
        # Results live in SQL (the job row), never in a result backend.
        task_ignore_result=True,
        # A job message is acknowledged only once its task finished, and a worker lost
        # mid-task hands it back: with the resume-from-checkpoint task this loses no work.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_max_tasks_per_child=None,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(settings.broker_url, settings),
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    return app


def _transport_options(broker_url: str, settings: Settings) -> dict[str, object]:
    if broker_url.startswith("sqla+"):
        # Kombu hands these to SQLAlchemy's create_engine: wait on SQLite's write lock (the API
        # and the worker share the file) instead of failing at once.
        return {"connect_args": {"timeout": 30}} if "sqlite" in broker_url else {}
    return {"visibility_timeout": settings.broker_visibility_timeout_s}


@lru_cache(maxsize=4)
def _client(broker_url: str) -> Celery:
    return make_celery(get_settings())


def enqueue(task_name: str, job_id: str) -> None:
    """Send one job id to the worker queue. Call only after the job row is committed."""
    _client(get_settings().broker_url).send_task(task_name, args=[job_id], queue=TRAINING_QUEUE)


def broker_reachable(timeout_s: float = 3.0) -> str | None:
    """None when the broker answers, else the reason it does not."""
    try:
        with _client(get_settings().broker_url).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
        return None
    except Exception as exc:  # any transport error is a reason to report, not to raise
        return f"{type(exc).__name__}: {exc}"
