"""GET /jobs/{id}/events/stream: order, resume with Last-Event-ID, live rows, the end, errors.

The rows are written here as the worker's sink writes them (one transaction each), so the stream
is tested on SQLite and PostgreSQL without a training run; tests/integration/test_cli.py watches
a real worker's job through it."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from httpx_sse import connect_sse
from sqlalchemy import update

from core.db import session_scope
from core.tables import Dataset, Job, JobEvent, MetricPoint, utcnow


def _job(state: str = "running") -> str:
    with session_scope() as session:
        dataset = Dataset(name="t.csv", task="single_label", format="csv", encoding="utf-8",
                          text_column="text", label_columns=["label"], labels=["neg", "pos"],
                          num_rows={"train": 10}, sha256="0" * 64, storage_path="/nowhere")
        session.add(dataset)
        session.flush()
        job = Job(dataset_id=dataset.id, base_model="m", task="single_label", state=state, total_steps=4)
        session.add(job)
        session.flush()
        return job.id


def _event(job_id: str, kind: str) -> None:
    with session_scope() as session:
        session.add(JobEvent(job_id=job_id, kind=kind, message=f"{kind} happened"))


def _point(job_id: str, step: int, kind: str = "train") -> None:
    with session_scope() as session:
        session.add(MetricPoint(job_id=job_id, kind=kind, step=step, epoch=step / 4,
                                values={"loss": 1 / step}))
        session.execute(update(Job).where(Job.id == job_id).values(step=step, progress=step / 4))


def _finish(job_id: str, state: str = "succeeded") -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(state=state, finished_at=utcnow()))
    _event(job_id, state)


def _read(client: Any, job_id: str, last_event_id: str | None = None,
          first_progress: threading.Event | None = None) -> list[tuple[str, str, Any]]:
    """Every item of the stream until it ends; `first_progress` is set once the stream has sent
    its first progress event, so a writer can start only when the stream is surely open."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    items: list[tuple[str, str, Any]] = []
    # (httpx_sse repeats the last id on events that carry none, as the SSE spec says a browser
    # does: only log and metric events are told apart by their id here.)
    with connect_sse(client, "GET", f"/jobs/{job_id}/events/stream", headers=headers) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        for sse in source.iter_sse():
            items.append((sse.event, sse.id, json.loads(sse.data)))
            if first_progress is not None and sse.event == "progress":
                first_progress.set()
    return items


def test_a_finished_job_streams_its_history_in_order_then_ends(client: Any) -> None:
    job_id = _job()
    _event(job_id, "started")
    _point(job_id, 1)
    _point(job_id, 2)
    _event(job_id, "evaluated")
    _point(job_id, 2, kind="eval")
    _finish(job_id)

    items = _read(client, job_id)
    kinds = [(e, d.get("kind")) for e, _, d in items if e in {"log", "metric"}]
    assert kinds == [("log", "started"), ("metric", "train"), ("metric", "train"), ("log", "evaluated"),
                     ("metric", "eval"), ("log", "succeeded")]
    assert items[-1][0] == "end" and items[-1][2]["state"] == "succeeded" and items[-1][2]["id"] == job_id
    progress = [d for e, _, d in items if e == "progress"]
    assert progress and progress[-1]["state"] == "succeeded" and progress[-1]["step"] == 2
    metric = next(d for e, _, d in items if e == "metric")
    assert (metric["step"], metric["loss"]) == (1, 1.0)


def test_last_event_id_resumes_after_the_event_and_the_point(client: Any) -> None:
    job_id = _job()
    _event(job_id, "started")
    _point(job_id, 1)
    _point(job_id, 2)
    _event(job_id, "evaluated")
    _point(job_id, 3)
    _finish(job_id)
    first = [(e, i, d) for e, i, d in _read(client, job_id) if e in {"log", "metric"}]
    ids = [i for _, i, _ in first]

    # After the second train point ("E:M"): the rest, nothing twice.
    after_point = _read(client, job_id, last_event_id=ids[2])
    assert [(e, d.get("kind"), d.get("step")) for e, i, d in after_point if e in {"log", "metric"}] == [
        ("log", "evaluated", None), ("metric", "train", 3), ("log", "succeeded", None)]
    # After the event alone: the points written after it.
    after_event = _read(client, job_id, last_event_id=ids[3])
    assert [(e, d.get("step")) for e, i, d in after_event if e in {"log", "metric"}] == [
        ("metric", 3), ("log", None)]
    # After the last one: only the job's state and the end.
    assert [e for e, _, _ in _read(client, job_id, last_event_id=ids[-1])] == ["progress", "end"]


def test_rows_written_while_watching_arrive_live_and_the_stream_ends_with_the_job(client: Any) -> None:
    job_id = _job()
    _event(job_id, "started")

    stream_open = threading.Event()

    def worker() -> None:
        # Write only once the stream has reported step 0, so every row below is written while
        # the client watches (the test must not depend on how fast the stream starts).
        if not stream_open.wait(timeout=60):
            _finish(job_id, "failed")   # ends the stream; the asserts below then say what was missed
            return
        for step in (1, 2, 3):
            time.sleep(0.3)
            _point(job_id, step)
        _finish(job_id, "cancelled")

    writer = threading.Thread(target=worker)
    writer.start()
    items = _read(client, job_id, first_progress=stream_open)
    writer.join()
    assert [d["step"] for e, _, d in items if e == "metric"] == [1, 2, 3]
    assert [d["kind"] for e, _, d in items if e == "log"] == ["started", "cancelled"]
    steps_seen = [d["step"] for e, _, d in items if e == "progress"]
    assert steps_seen[0] == 0 and steps_seen[-1] == 3
    assert items[-1][0] == "end" and items[-1][2]["state"] == "cancelled"


def test_unknown_job_and_a_malformed_last_event_id_are_4xx(client: Any) -> None:
    resp = client.get("/jobs/job_nope/events/stream")
    assert resp.status_code == 404
    assert resp.json()["detail"] == "No job with id 'job_nope'; GET /jobs lists them."
    job_id = _job("succeeded")
    resp = client.get(f"/jobs/{job_id}/events/stream", headers={"Last-Event-ID": "abc"})
    assert resp.status_code == 400
    assert "Last-Event-ID 'abc'" in resp.json()["detail"]


def test_the_stream_needs_the_key_that_owns_the_job(monkeypatch: Any, tmp_path: Any,
                                                    database_url: str) -> None:
    from fastapi.testclient import TestClient

    from app.auth import create_key
    from app.main import create_app
    from app.migrate import upgrade_head
    from core.settings import get_settings
    from tests.conftest import configure

    configure(monkeypatch, tmp_path, database_url, auth="on")
    upgrade_head(get_settings().database_url)
    with session_scope() as session:
        (alice, alice_key), (_, bob_key) = (create_key(session, name=n) for n in ("alice", "bob"))
        alice_id = alice.id
    job_id = _job("succeeded")
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(tenant_id=alice_id))
    _event(job_id, "succeeded")
    with TestClient(create_app()) as client:
        assert client.get(f"/jobs/{job_id}/events/stream").status_code == 401
        bob = client.get(f"/jobs/{job_id}/events/stream", headers={"Authorization": f"Bearer {bob_key}"})
        assert bob.status_code == 404 and job_id in bob.json()["detail"]
        client.headers["Authorization"] = f"Bearer {alice_key}"
        assert [e for e, _, _ in _read(client, job_id)] == ["log", "progress", "end"]
