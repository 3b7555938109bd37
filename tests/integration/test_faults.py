"""Faults while a job trains, with real processes on loopback, each bounded in time: the broker
restarted, the API restarted, a worker SIGKILLed twice, the database connections killed, the
disk full at a checkpoint. Over Redis + PostgreSQL, and the embedded defaults (SQLite database,
SQLite broker) where the fault exists there.

The shared Redis and PostgreSQL servers are never touched: the broker that is restarted is a
private redis-server on a free port, and only this test's own database connections (found by
their application_name) are terminated."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import ROOT, kill_own_connections
from tests.integration.conftest import (
    WorkerProcess,
    service_env,
    upload,
    wait_for_job,
    wait_until,
    write_sentiment_csv,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# 96 rows -> 77 training rows, 16 per step: 5 steps an epoch, 15 in all; a checkpoint every 3.
JOB = {"epochs": 3, "batch_size": 16, "learning_rate": 5e-4, "max_seq_length": 32, "logging_steps": 1,
       "warmup_ratio": 0.0, "eval_strategy": "steps", "eval_steps": 3}
# Slow enough steps that a fault lands mid-run; a short lease so a new worker takes over at once.
SLOW = {"fault_step_delay_s": 0.3, "job_lease_s": 3, "heartbeat_interval_s": 0.5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own on a free loopback port, without persistence: a
    restart loses every message, the harshest case for a job already running."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.workdir = _free_port(), workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, timeout_s=20, what="the private redis-server")

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def _start_job(client: Any, tmp_path: Path, base_model: Path, **hp: Any) -> str:
    dataset = upload(client, write_sentiment_csv(tmp_path / f"sentiment-{uuid.uuid4().hex[:6]}.csv"))
    resp = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": str(base_model),
                                      "hyperparameters": {**JOB, **hp}})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _step(client: Any, job_id: str) -> int:
    return int(client.get(f"/jobs/{job_id}").json()["step"])


def _assert_each_step_once(client: Any, job_id: str, total: int = 15) -> None:
    metrics = client.get(f"/jobs/{job_id}/metrics").json()
    assert [p["step"] for p in metrics["train"]] == list(range(1, total + 1))
    # Every 3 steps, and at the last step (where the run ends, it evaluates once more).
    assert [p["step"] for p in metrics["eval"]] == sorted({*range(3, total + 1, 3), total})


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_broker_restarted_mid_job_the_job_completes(
    stack: Any, tmp_path: Path, tiny_encoder_dir: Path, private_redis: PrivateRedis,
) -> None:
    client, start_worker = stack(broker_url=private_redis.url, **SLOW)
    worker = start_worker()
    job_id = _start_job(client, tmp_path, tiny_encoder_dir)
    wait_until(lambda: _step(client, job_id) >= 2, what="the job to be training")
    private_redis.stop()
    stopped_at = _step(client, job_id)
    # The job trains on with the broker gone (the solo pool's consumer is inside the task, so it
    # meets the lost connection when the task acknowledges): two steps while it is down.
    wait_until(lambda: _step(client, job_id) >= stopped_at + 2, timeout_s=60,
               what="two steps trained while the broker is down")
    assert client.get(f"/jobs/{job_id}").json()["state"] == "running"
    private_redis.start()
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, timeout_s=120, worker=worker)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 1
    _assert_each_step_once(client, job_id)
    # The worker is connected to the new broker: a job queued after the restart runs too.
    after = _start_job(client, tmp_path, tiny_encoder_dir, max_steps=2)
    assert wait_for_job(client, after, {"succeeded", "failed"}, timeout_s=120,
                        worker=worker)["state"] == "succeeded"


@pytest.mark.parametrize(("database_url", "embedded"), [("postgresql", False), ("sqlite", True)],
                         indirect=["database_url"])
def test_worker_sigkilled_twice_completes_with_each_step_recorded_once(
    stack: Any, tmp_path: Path, tiny_encoder_dir: Path, embedded: bool,
) -> None:
    client, start_worker = stack(embedded_broker=embedded, **SLOW)
    job_id = _start_job(client, tmp_path, tiny_encoder_dir)

    def resumed_steps() -> list[int]:
        events = client.get(f"/jobs/{job_id}/events").json()
        return [e["data"]["step"] for e in events if e["kind"] == "resumed"]

    def newest_checkpoint() -> int:
        return max((c["step"] for c in client.get(f"/jobs/{job_id}/checkpoints").json()), default=0)

    for kills in range(2):
        worker = start_worker()
        # Each kill lands after this attempt wrote a checkpoint of its own and trained past it.
        wait_until(lambda k=kills: len(resumed_steps()) == k, timeout_s=120,  # type: ignore[misc]
                   what=f"attempt {kills + 1} to start")
        since = max(resumed_steps(), default=0)
        saved = wait_until(lambda s=since: (n := newest_checkpoint()) > s and n,  # type: ignore[misc]
                           timeout_s=120, what=f"a checkpoint after step {since}")
        wait_until(lambda s=saved: _step(client, job_id) > s, what="a step past it")
        worker.kill()
    last = start_worker()
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, timeout_s=120, worker=last)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 3 and job["step"] == job["total_steps"] == 15
    resumed = resumed_steps()
    # Each attempt resumed from the newest checkpoint before its kill: later each time.
    assert len(resumed) == 2 and 0 < resumed[0] < resumed[1] < 15
    _assert_each_step_once(client, job_id)


@pytest.mark.parametrize(("database_url", "embedded"), [("postgresql", False), ("sqlite", True)],
                         indirect=["database_url"])
def test_api_restarted_mid_job_loses_no_state(
    tmp_path: Path, tiny_encoder_dir: Path, database_url: str, embedded: bool, redis_broker: str,
) -> None:
    broker = f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}" if embedded else redis_broker
    env = service_env(tmp_path, database_url, broker, **SLOW)
    port = _free_port()
    api_log = (tmp_path / "api.log").open("ab")

    def start_api() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=api_log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: _answers(port), timeout_s=60, what="the API")
        return proc

    api = start_api()
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            job_id = _start_job(client, tmp_path, tiny_encoder_dir, epochs=2)
            wait_until(lambda: _step(client, job_id) >= 2, timeout_s=120, what="the job to be training")
            before = client.get(f"/jobs/{job_id}").json()
            os.killpg(api.pid, 9)
            api.wait(timeout=10)
            api = start_api()
            again = client.get(f"/jobs/{job_id}").json()
            # Nothing lost: the same job, at least as far as before, and it keeps moving.
            assert again["id"] == job_id and again["step"] >= before["step"]
            assert again["state"] in {"running", "succeeded"}
            assert len(client.get(f"/jobs/{job_id}/events").json()) >= 3
            job = wait_for_job(client, job_id, {"succeeded", "failed"}, timeout_s=120, worker=worker)
            assert job["state"] == "succeeded", job["error"]
            assert job["attempts"] == 1
            _assert_each_step_once(client, job_id, total=10)
    finally:
        worker.stop()
        if api.poll() is None:
            os.killpg(api.pid, 15)
            api.wait(timeout=15)


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_database_connections_killed_mid_job_the_worker_retries_and_completes(
    stack: Any, tmp_path: Path, tiny_encoder_dir: Path, database_url: str,
) -> None:
    client, start_worker = stack(**SLOW)
    worker = start_worker()
    job_id = _start_job(client, tmp_path, tiny_encoder_dir)
    for at_step in (2, 8):
        wait_until(lambda s=at_step: _step(client, job_id) >= s,  # type: ignore[misc]
                   timeout_s=120, what=f"step {at_step}")
        assert kill_own_connections(database_url) >= 1
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, timeout_s=120, worker=worker)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 1
    _assert_each_step_once(client, job_id)


@pytest.mark.parametrize(("database_url", "embedded"), [("sqlite", True)], indirect=["database_url"])
def test_disk_full_at_a_checkpoint_fails_the_job_cleanly_and_keeps_the_last_good_one(
    stack: Any, tmp_path: Path, tiny_encoder_dir: Path, embedded: bool,
) -> None:
    """The fault is injected (TUNESERVE_FAULT_DISK_FULL_FROM_STEP raises ENOSPC half-way through
    writing the first checkpoint after step 3, the epoch end at step 5), so the test needs no
    mount of its own."""
    import torch

    from core.store import checkpoints_dir

    client, start_worker = stack(embedded_broker=embedded, fault_disk_full_from_step=4)
    worker = start_worker()
    job_id = _start_job(client, tmp_path, tiny_encoder_dir)
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, timeout_s=120, worker=worker)
    assert job["state"] == "failed"
    assert job["error"].startswith("The disk is full: the checkpoint at step 5 could not be written")
    assert "the last good checkpoint, step 3, is intact" in job["error"]
    assert "bug in tuneserve" not in job["error"]
    root = checkpoints_dir(tmp_path / "models_store", job_id)
    assert sorted(p.name for p in root.iterdir()) == ["step-3"]  # nothing half-written left
    state = torch.load(root / "step-3" / "training_state.pt", map_location="cpu", weights_only=True)
    assert state["loop"]["global_step"] == 3
    assert (root / "step-3" / "model.safetensors").is_file()
    checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()
    assert [(c["step"], c["available"]) for c in checkpoints] == [(3, True)]
