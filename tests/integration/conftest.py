"""Real processes: a Celery worker subprocess on the Redis at 127.0.0.1:6379 (or the embedded
SQLite broker), the API over the same PostgreSQL/SQLite database, and helpers to drive them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import REDIS_URL, ROOT, configure


class WorkerProcess:
    """One `celery -A worker.celery_app worker` subprocess with its own log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool", "solo",
             "--concurrency", "1", "--queues", "training", "--loglevel", "INFO",
             "--hostname", f"test-{os.getpid()}-{time.monotonic_ns()}@%h"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        start_size = self.log_path.stat().st_size if self.log_path.exists() else 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited at start:\n{self.log_text()[-3000:]}")
            if " ready." in self.log_text()[start_size:]:
                return self
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready in {timeout_s}s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the process dies mid-step, acknowledges nothing and cleans up nothing."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGQUIT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def redis_broker() -> Iterator[str]:
    """The Redis on 127.0.0.1:6379, database 15, emptied before and after each test."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


def service_env(tmp_path: Path, database_url: str, broker_url: str, **extra: Any) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "TUNESERVE_DATA_DIR": str(tmp_path / "var"),
        "TUNESERVE_MODELS_DIR": str(tmp_path / "models_store"),
        "TUNESERVE_DATABASE_URL": database_url,
        "TUNESERVE_BROKER_URL": broker_url,
        "TUNESERVE_AUTO_MIGRATE": "true",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # Two cores here: a worker that takes both starves the test process that watches it.
        "TUNESERVE_TORCH_THREADS": "1",
    })
    env.update({f"TUNESERVE_{k.upper()}": str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str,
          redis_broker: str) -> Iterator[Callable[..., tuple[Any, Callable[..., WorkerProcess]]]]:
    """Returns make(**settings) -> (api client, start_worker()): the API in-process over the same
    database and broker as worker subprocesses started with the same settings."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    workers: list[WorkerProcess] = []
    clients: list[Any] = []

    def make(embedded_broker: bool = False, broker_url: str | None = None,
             **extra: Any) -> tuple[Any, Callable[..., WorkerProcess]]:
        # The embedded broker: Celery's SQLAlchemy transport on a SQLite file, as `tuneserve up` uses.
        broker = broker_url or (f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}" if embedded_broker
                                else redis_broker)
        configure(monkeypatch, tmp_path, database_url, broker_url=broker,
                  **{k: str(v) for k, v in extra.items()})
        client = TestClient(create_app())
        client.__enter__()
        clients.append(client)
        env = service_env(tmp_path, database_url, broker, **extra)

        def start_worker(**worker_extra: Any) -> WorkerProcess:
            """A worker with the stack's settings, and `worker_extra` settings of its own."""
            own_env = env | {f"TUNESERVE_{k.upper()}": str(v) for k, v in worker_extra.items()}
            worker = WorkerProcess(own_env, tmp_path / f"worker-{len(workers)}.log").start()
            workers.append(worker)
            return worker

        return client, start_worker

    yield make
    for worker in workers:
        worker.stop()
    for client in clients:
        client.__exit__(None, None, None)


def write_sentiment_csv(path: Path, rows: int = 96) -> Path:
    """An easy two-class set: a tiny random model learns it in a few steps."""
    pos = ["great film, loved it", "wonderful acting and a fine story", "a delight from start to end",
           "superb, moving and funny"]
    neg = ["awful film, hated it", "boring plot and dull acting", "a waste of two hours",
           "terrible, slow and silly"]
    lines = ["text,label"]
    for i in range(rows):
        source = pos if i % 2 == 0 else neg
        lines.append(f"\"{source[i // 2 % len(source)]} #{i}\",{'positive' if i % 2 == 0 else 'negative'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def upload(client: Any, path: Path, **form: str) -> dict[str, Any]:
    with path.open("rb") as fh:
        resp = client.post("/datasets", files={"file": (path.name, fh)}, data=form)
    assert resp.status_code == 201, resp.text
    return resp.json()


def wait_for_job(client: Any, job_id: str, states: set[str], timeout_s: float = 240,
                 worker: WorkerProcess | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.3)
    logs = worker.log_text()[-4000:] if worker else ""
    events = client.get(f"/jobs/{job_id}/events").json()
    raise TimeoutError(f"job {job_id} still {job.get('state')} after {timeout_s}s; events={events}\n{logs}")


def wait_until(predicate: Callable[[], Any], timeout_s: float = 120, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> Iterator[Any]:
    """uvicorn + a worker on their own SQLite database and embedded broker (see live_service.py)."""
    from tests.integration.live_service import LiveService

    directory = tmp_path_factory.mktemp("live")
    # A chat job's generation report: a few short replies, not the default 64 of 64 tokens.
    env = service_env(directory, f"sqlite:///{directory / 'tuneserve.sqlite'}",
                      f"sqla+sqlite:///{directory / 'broker.sqlite'}", compare_max_prompts=4,
                      compare_max_new_tokens=8)
    service = LiveService(directory, env, tiny_encoder_dir).start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="package")
def finished(live: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One job run by the CLI from a seed-style config.ini and watched to its end."""
    from tests.integration.live_service import run_seed_config_job

    return run_seed_config_job(live, tmp_path_factory.mktemp("seed-project"))
