"""Stopping and killing never cost work, at their worst timing: Ctrl-C on a real `tuneserve up`
whose stdout pipe was closed first (once: the job resumes at the step it stopped at; twice: at
once, from its last checkpoint), SIGTERM to a worker (what `docker compose stop` sends), and a
worker SIGKILLed before its first checkpoint, once and then again. Each time no process is left
behind and every optimizer step shows exactly once in the job's metrics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
from tests.integration.conftest import upload, wait_for_job, wait_until, write_sentiment_csv

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# 96 rows -> 77 training rows, 16 per step: 5 steps an epoch, 15 in all; evaluation (and its
# checkpoint) at each epoch end only, and no checkpoint by time: before step 5 there is none.
JOB = {"epochs": 3, "batch_size": 16, "learning_rate": 5e-4, "max_seq_length": 32, "logging_steps": 1,
       "warmup_ratio": 0.0}
TOTAL_STEPS = 15
SLOW = {"fault_step_delay_s": 0.4, "job_lease_s": 3, "heartbeat_interval_s": 0.5}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` now, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Up:
    """`tuneserve up` with the embedded defaults in `cwd`, its stdout a pipe this test reads."""

    def __init__(self, cwd: Path, **settings: Any) -> None:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESERVE_")}
        env.update({"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TUNESERVE_TORCH_THREADS": "1"})
        env.update({f"TUNESERVE_{k.upper()}": str(v) for k, v in settings.items()})
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "up", "--port", str(self.port)],
                                     cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def wait_ready(self, timeout_s: float = 120) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        lines: list[bytes] = []
        while time.monotonic() < deadline:  # the worker's " ready." line, read from the pipe
            line = self.proc.stdout.readline()
            lines.append(line)
            if b" ready." in line or not line:
                break
        assert any(b" ready." in line for line in lines), b"".join(lines).decode(errors="replace")
        wait_until(lambda: self._answers(), timeout_s=60, what="the API")

    def _answers(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def close_stdout(self) -> None:
        """The reader goes away: every later write of the supervisor meets a closed pipe."""
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def kill_all(self) -> None:
        for pid in [*_children(self.proc.pid), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _start_job(http: Any, tmp_path: Path, base_model: Path) -> str:
    dataset = upload(http, write_sentiment_csv(tmp_path / f"sentiment-{uuid.uuid4().hex[:6]}.csv"))
    resp = http.post("/jobs", json={"dataset_id": dataset["id"], "base_model": str(base_model),
                                    "hyperparameters": JOB})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def _events(http: Any, job_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in http.get(f"/jobs/{job_id}/events").json() if e["kind"] == kind]


def _assert_each_step_once(http: Any, job_id: str) -> None:
    metrics = http.get(f"/jobs/{job_id}/metrics").json()
    assert [p["step"] for p in metrics["train"]] == list(range(1, TOTAL_STEPS + 1))
    assert [p["step"] for p in metrics["eval"]] == [5, 10, 15]
    steps = [c["step"] for c in http.get(f"/jobs/{job_id}/checkpoints").json()]
    assert len(steps) == len(set(steps)), steps


@pytest.mark.parametrize("signals", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
def test_ctrl_c_on_tuneserve_up_with_stdout_closed_keeps_the_job(tmp_path: Path, tiny_encoder_dir: Path,
                                                                 signals: int) -> None:
    up = Up(tmp_path, **SLOW)
    try:
        up.wait_ready()
        job_id = _start_job(up.http, tmp_path, tiny_encoder_dir)
        wait_until(lambda: up.http.get(f"/jobs/{job_id}").json()["step"] >= 2, what="step 2")
        children = _children(up.proc.pid)
        assert len(children) >= 2, children  # the API and the worker (and what they started)
        up.close_stdout()
        for _ in range(signals):
            up.proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        assert up.proc.wait(timeout=120) == 0
        assert not [pid for pid in children if _alive(pid)], "a child of tuneserve up outlived it"
    finally:
        up.kill_all()

    again = Up(tmp_path, **SLOW)
    try:
        again.wait_ready()
        stopped = _events(again.http, job_id, "stopped")
        assert len(stopped) == 1, again.http.get(f"/jobs/{job_id}/events").json()
        job = wait_for_job(again.http, job_id, {"succeeded", "failed"}, timeout_s=180)
        assert job["state"] == "succeeded", job["error"]
        assert job["error_kind"] is None
        resumed = _events(again.http, job_id, "resumed")
        if signals == 1:
            # It stopped after a step, wrote a checkpoint there, and the next start resumed there.
            stop_step = stopped[0]["data"]["step"]
            assert stopped[0]["data"]["checkpointed"] and 2 <= stop_step < TOTAL_STEPS
            assert [e["data"]["step"] for e in resumed] == [stop_step]
        else:
            # At once: no checkpoint of its own; it resumed from the last one, or from the start.
            assert not stopped[0]["data"]["checkpointed"]
            assert resumed or _events(again.http, job_id, "restarted")
        _assert_each_step_once(again.http, job_id)
    finally:
        again.proc.send_signal(signal.SIGINT)
        again.proc.wait(timeout=120)
        again.kill_all()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_sigterm_to_a_worker_stops_at_the_next_step_and_queues_the_job(
    stack: Any, tmp_path: Path, tiny_encoder_dir: Path,
) -> None:
    client, start_worker = stack(**SLOW)
    worker = start_worker()
    job_id = _start_job(client, tmp_path, tiny_encoder_dir)
    wait_until(lambda: client.get(f"/jobs/{job_id}").json()["step"] >= 2, what="step 2")
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=60) == 0
    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "queued" and job["error"] is None
    (stopped,) = _events(client, job_id, "stopped")
    assert stopped["data"]["checkpointed"]
    assert stopped["data"]["step"] in [c["step"] for c in client.get(f"/jobs/{job_id}/checkpoints").json()]
    last = start_worker()
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, timeout_s=120, worker=last)
    assert job["state"] == "succeeded", job["error"]
    assert [e["data"]["step"] for e in _events(client, job_id, "resumed")] == [stopped["data"]["step"]]
    # The resumed attempt restored its head from the checkpoint: the new head was said once.
    assert len(_events(client, job_id, "new_weights")) == 1
    _assert_each_step_once(client, job_id)


@pytest.mark.parametrize(("database_url", "embedded"), [("postgresql", False), ("sqlite", True)],
                         indirect=["database_url"])
def test_a_worker_killed_before_its_first_checkpoint_twice_leaves_each_step_once(
    stack: Any, tmp_path: Path, tiny_encoder_dir: Path, embedded: bool,
) -> None:
    # A second a step: the kill at step 1 has four seconds before the first checkpoint (step 5),
    # room enough on a loaded machine (with 0.4 s a step, a checkpoint once slipped in first).
    client, start_worker = stack(embedded_broker=embedded, **{**SLOW, "fault_step_delay_s": 1.0})
    job_id = _start_job(client, tmp_path, tiny_encoder_dir)
    for kill in range(2):
        worker = start_worker()
        wait_until(lambda k=kill: len(_events(client, job_id, "started")) == k + 1,  # type: ignore[misc]
                   timeout_s=120, what=f"attempt {kill + 1} to start")
        wait_until(lambda: client.get(f"/jobs/{job_id}").json()["step"] >= 1, what="step 1")
        worker.kill()
        assert client.get(f"/jobs/{job_id}/checkpoints").json() == []  # killed before the first one
    last = start_worker()
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, timeout_s=180, worker=last)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 3
    # Each later attempt started from the start, through the resume path that replaces points.
    assert len(_events(client, job_id, "restarted")) == 2
    _assert_each_step_once(client, job_id)
