"""Engines and sessions over a real migrated database (SQLite and PostgreSQL): a session scope
commits or rolls back as a whole, and write_with_retry survives a PostgreSQL connection that
is really terminated (pg_terminate_backend on this test's own connections) mid-transaction."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from core import db
from core.db import get_engine, rows_updated, session_scope, write_with_retry
from core.tables import Job, JobEvent
from tests.conftest import kill_own_connections

only_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _job(**fields: Any) -> str:
    with session_scope() as session:
        job = Job(base_model="m", task="single_label", **fields)
        session.add(job)
        session.flush()
        return job.id


def _events(job_id: str) -> list[str]:
    with session_scope() as session:
        return list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)
                                    .order_by(JobEvent.id)))


def test_one_engine_per_url(settings: Any) -> None:
    assert get_engine() is get_engine(settings.database_url)


def test_session_scope_commits_what_the_block_wrote(settings: Any) -> None:
    job_id = _job()
    with session_scope() as session:
        session.add(JobEvent(job_id=job_id, kind="note", message="kept"))
    # A new session (a new connection from the pool) sees it: it was committed.
    assert _events(job_id) == ["kept"]


def test_session_scope_rolls_back_everything_on_an_error(settings: Any) -> None:
    job_id = _job()
    with pytest.raises(RuntimeError, match="half-way"), session_scope() as session:
        session.add(JobEvent(job_id=job_id, kind="note", message="first"))
        session.flush()  # sent to the database: only the rollback takes it back
        session.execute(update(Job).where(Job.id == job_id).values(step=7))
        raise RuntimeError("half-way")
    assert _events(job_id) == []
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.step == 0


def test_foreign_keys_are_enforced_on_both_databases(settings: Any) -> None:
    # SQLite enforces them only with PRAGMA foreign_keys=ON on every connection.
    with pytest.raises(IntegrityError), session_scope() as session:
        session.add(JobEvent(job_id="job_does_not_exist", kind="note", message="orphan"))
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(JobEvent)) == 0


def test_rows_updated_counts_the_rows_a_conditional_update_touched(settings: Any) -> None:
    queued, running = _job(state="queued"), _job(state="running")
    with session_scope() as session:
        assert rows_updated(session, update(Job).where(Job.state == "queued").values(progress=0.5)) == 1
        assert rows_updated(session, update(Job).where(Job.id.in_([queued, running])).values(step=1)) == 2
        assert rows_updated(session, update(Job).where(Job.state == "succeeded").values(step=2)) == 0


def test_write_with_retry_returns_the_result_and_does_not_retry_other_errors(settings: Any) -> None:
    job_id = _job()
    assert write_with_retry(lambda s: rows_updated(s, update(Job).where(Job.id == job_id).values(step=3)),
                            what="test") == 1
    calls: list[int] = []

    def orphan(session: Session) -> None:
        calls.append(1)
        session.add(JobEvent(job_id="job_does_not_exist", kind="note", message="orphan"))
        session.flush()

    # A broken write is not a lost connection: it fails at once, the first time.
    with pytest.raises(IntegrityError):
        write_with_retry(orphan, what="test")
    assert len(calls) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sqlite_runs_in_wal_mode(settings: Any) -> None:
    # WAL: the API's readers are not blocked while the worker's writer commits.
    with get_engine().connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def _kill_mid_transaction(database_url: str, session: Session) -> None:
    """Take this session's connection (a transaction begins), then terminate it on the server."""
    session.execute(text("SELECT 1"))
    assert kill_own_connections(database_url) >= 1


@only_postgresql
def test_write_with_retry_repeats_a_write_whose_connection_was_terminated(
    settings: Any, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = _job()
    attempts: list[int] = []

    def write(session: Session) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            _kill_mid_transaction(database_url, session)
        session.add(JobEvent(job_id=job_id, kind="note", message="written once"))
        session.flush()
        return "done"

    with caplog.at_level(logging.WARNING, logger="tuneserve.db"):
        assert write_with_retry(write, what=f"job {job_id}: note") == "done"
    assert len(attempts) == 2
    # The first attempt's transaction died with its connection: the row is there once.
    assert _events(job_id) == ["written once"]
    assert any(f"job {job_id}: note: database connection lost" in r.getMessage() for r in caplog.records)


@only_postgresql
def test_a_connection_terminated_while_idle_in_the_pool_is_replaced_without_a_retry(
    settings: Any, database_url: str
) -> None:
    job_id = _job()  # leaves a pooled connection behind
    assert kill_own_connections(database_url) >= 1
    attempts: list[int] = []

    def write(session: Session) -> None:
        attempts.append(1)
        session.add(JobEvent(job_id=job_id, kind="note", message="after the kill"))

    write_with_retry(write, what="test")
    # pool_pre_ping found the dead connection before the write used it.
    assert len(attempts) == 1 and _events(job_id) == ["after the kill"]


@only_postgresql
def test_write_with_retry_gives_up_after_its_attempts(
    settings: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _job()
    monkeypatch.setattr(db, "WRITE_ATTEMPTS", 2)  # 0.25 s of backoff instead of ~8 s
    attempts: list[int] = []

    def write(session: Session) -> None:
        attempts.append(1)
        _kill_mid_transaction(database_url, session)
        session.add(JobEvent(job_id=job_id, kind="note", message="never"))
        session.flush()

    with pytest.raises(OperationalError):
        write_with_retry(write, what="test")
    assert len(attempts) == 2 and _events(job_id) == []
