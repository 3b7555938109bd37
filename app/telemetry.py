"""Prometheus metrics of the API process, served by GET /metrics (routes/health.py).

Counted as they happen: requests by route, method and status, and their latency; /predict's
batch sizes and how long texts waited for a batch; model cache hits and misses. Read from the
database and the disk at scrape time, so they hold for every worker process and survive
restarts: jobs by state, queue depth (jobs waiting for a worker), training throughput of the
running jobs, disk used by jobs' checkpoints. GPU memory when this process has a GPU in use.

Metrics live in the process-wide default registry: one set per process, however many apps.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import store

log = logging.getLogger("tuneserve.telemetry")

HTTP_REQUESTS = Counter(
    "tuneserve_http_requests", "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "tuneserve_http_request_duration_seconds", "Time to the response's first byte, by route and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PREDICT_BATCH_SIZE = Histogram(
    "tuneserve_predict_batch_size", "Texts per forward pass of the /predict batcher.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
PREDICT_QUEUE_WAIT = Histogram(
    "tuneserve_predict_queue_wait_seconds", "How long a /predict text waited before its forward began.",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
MODEL_CACHE = Counter(
    "tuneserve_model_cache_lookups", "Model lookups of /predict, by result (hit: already loaded).",
    ["result"],
)
# Routes are labelled by template (/jobs/{job_id}), never the raw path: ids would make a new
# series per object. Requests that matched no route share one label.
UNMATCHED_ROUTE = "unmatched"


class RequestMetrics:
    """Pure ASGI: counts every response, including those a middleware or the router sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees when the app raises before it answers

        async def send_and_observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
                HTTP_LATENCY.labels(route, scope["method"]).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        finally:
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            HTTP_REQUESTS.labels(route, scope["method"], str(status)).inc()


class StateCollector(Collector):
    """Figures read at scrape time from SQL and the models directory."""

    # Walking every checkpoint directory is I/O; a scrape every 15 s need not repeat it each time.
    DISK_SCAN_INTERVAL_S = 60.0

    def __init__(self) -> None:
        self._disk: tuple[float, float] | None = None  # (when, bytes)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from core.settings import get_settings

        settings = get_settings()
        try:
            yield from self._from_database()
        except Exception:  # a scrape must not fail because the database is down; /readyz says so
            log.warning("metrics: the database could not be read", exc_info=True)
        disk = GaugeMetricFamily("tuneserve_job_disk_bytes",
                                 "Bytes on disk under the models directory's jobs/ (checkpoints).")
        disk.add_metric([], self._disk_used(Path(settings.models_dir) / "jobs"))
        yield disk
        yield from _gpu_memory()

    def _from_database(self) -> Iterator[GaugeMetricFamily]:
        from sqlalchemy import func, select

        from core.db import new_session
        from core.jobstate import JobState
        from core.tables import Job, MetricPoint

        states = tuple(JobState)
        with new_session() as session:
            counts = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            running = list(session.scalars(select(Job.id).where(Job.state == JobState.RUNNING)))
            rates = []
            for job_id in running:
                values = session.scalar(select(MetricPoint.values).where(
                    MetricPoint.job_id == job_id, MetricPoint.kind == "train")
                    .order_by(MetricPoint.step.desc()).limit(1))
                rate = (values or {}).get("samples_per_second")
                if isinstance(rate, int | float):
                    rates.append(float(rate))
        jobs = GaugeMetricFamily("tuneserve_jobs", "Jobs by state.", labels=["state"])
        for state in states + tuple(s for s in counts if s not in states):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        depth = GaugeMetricFamily("tuneserve_queue_depth", "Jobs queued and not yet taken by a worker.")
        depth.add_metric([], counts.get(JobState.QUEUED, 0))
        yield depth
        speed = GaugeMetricFamily(
            "tuneserve_training_samples_per_second",
            "Training throughput summed over running jobs (each job's latest train point).")
        speed.add_metric([], sum(rates))
        yield speed

    def _disk_used(self, directory: Path) -> float:
        now = time.monotonic()
        if self._disk is None or now - self._disk[0] > self.DISK_SCAN_INTERVAL_S:
            self._disk = (now, float(store.dir_size_bytes(directory)))
        return self._disk[1]


def _gpu_memory() -> Iterator[GaugeMetricFamily]:
    # Only when this process already uses torch: a scrape must not import it (seconds, memory).
    torch: Any = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return
    family = GaugeMetricFamily("tuneserve_gpu_memory_bytes",
                               "GPU memory of this process, by device and kind.", labels=["device", "kind"])
    for index in range(torch.cuda.device_count()):
        family.add_metric([str(index), "allocated"], torch.cuda.memory_allocated(index))
        family.add_metric([str(index), "reserved"], torch.cuda.memory_reserved(index))
    yield family


_COLLECTOR = StateCollector()
REGISTRY.register(_COLLECTOR)
