"""enqueue() on real brokers: the Redis at 127.0.0.1:6379 (this run's own database number) and
the embedded SQLite broker. A kombu consumer on the training queue reads back what landed."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection
from kombu.exceptions import OperationalError

from core.queue import COMPARE_TASK, TRAIN_TASK, TRAINING_QUEUE, broker_reachable, enqueue
from tests.conftest import REDIS_URL, configure, read_training_queue


@pytest.fixture(params=["redis", "sqlite"])
def broker_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
               sqlite_url: str) -> Iterator[str]:
    """Settings pointing at one real broker, empty before and after the test."""
    if request.param == "redis":
        url = REDIS_URL
        redis.Redis.from_url(url).flushdb()
    else:
        url = f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}"
    configure(monkeypatch, tmp_path, sqlite_url, broker_url=url)
    yield url
    if request.param == "redis":
        redis.Redis.from_url(url).flushdb()


def _waiting(url: str) -> int:
    """Messages waiting on the training queue, read from the broker's own storage: the Redis
    list Celery pushes to, or the embedded broker's kombu_message table."""
    if url.startswith("redis"):
        return int(redis.Redis.from_url(url).llen(TRAINING_QUEUE))
    with sqlite3.connect(url.removeprefix("sqla+sqlite:///")) as db:
        return int(db.execute(
            "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON m.queue_id = q.id "
            "WHERE q.name = ? AND m.visible", (TRAINING_QUEUE,)).fetchone()[0])


def test_enqueue_lands_one_message_per_job_on_the_training_queue(broker_url: str) -> None:
    enqueue(TRAIN_TASK, "job_a")
    enqueue(COMPARE_TASK, "job_b")
    assert _waiting(broker_url) == 2  # stored by the broker before any consumer exists

    messages = read_training_queue(broker_url)
    # Celery's message protocol 2: the task name in the headers, the body (args, kwargs, embed).
    assert [(h["task"], body[0], body[1]) for h, body in messages] == [
        (TRAIN_TASK, ["job_a"], {}), (COMPARE_TASK, ["job_b"], {})]
    # Each send is a task of its own, and nothing is left to be delivered twice.
    assert len({h["id"] for h, _ in messages}) == 2
    assert _waiting(broker_url) == 0
    assert read_training_queue(broker_url, timeout_s=0.5) == []


def test_only_the_job_id_travels_as_json(broker_url: str) -> None:
    enqueue(TRAIN_TASK, "job_json")
    with Connection(broker_url) as conn, conn.SimpleQueue(TRAINING_QUEUE) as queue:
        message = queue.get(block=True, timeout=5)
        assert message.content_type == "application/json"
        assert message.payload[0] == ["job_json"]
        message.ack()


def test_broker_reachable_is_none_for_a_live_broker(broker_url: str) -> None:
    assert broker_reachable(timeout_s=3) is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens on it once the socket is closed


def test_an_unreachable_broker_is_named_and_refuses_the_send(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path, sqlite_url: str) -> None:
    configure(monkeypatch, tmp_path, sqlite_url, broker_url=f"redis://127.0.0.1:{_closed_port()}/0")
    reason = broker_reachable(timeout_s=1)
    assert reason is not None and "refused" in reason.lower()
    # The send fails loudly (the API then marks the job failed), after Celery's publish retries.
    with pytest.raises(OperationalError):
        enqueue(TRAIN_TASK, "job_nowhere")
