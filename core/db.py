"""Engine and sessions. One engine per database URL per process."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Engine, Executable, create_engine, event
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from core.settings import get_settings

log = logging.getLogger("tuneserve.db")
T = TypeVar("T")
# A restarted database or a terminated connection fails the write that was using it; the pool
# then hands out a fresh connection (pool_pre_ping). Backoff 0.25 s doubling: ~8 s in all.
WRITE_ATTEMPTS = 6


@lru_cache(maxsize=8)
def get_engine(url: str | None = None) -> Engine:
    if not url:
        # The settings' URL by name, so get_engine() and get_engine(that URL) share one pool.
        return get_engine(get_settings().database_url)
    if url.startswith("sqlite"):
        # The API and the worker are separate processes writing one file: wait on a lock
        # instead of failing, and let readers proceed while a writer commits (WAL).
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


@lru_cache(maxsize=8)
def _sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


def new_session(url: str | None = None) -> Session:
    return _sessionmaker(url or get_settings().database_url)()


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on any error."""
    session = new_session(url)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def rows_updated(session: Session, statement: Executable) -> int:
    """Run an UPDATE/DELETE and return how many rows it touched (conditional state changes
    read this to learn whether they won)."""
    result = cast(CursorResult[Any], session.execute(statement))
    return int(result.rowcount)


def write_with_retry(write: Callable[[Session], T], *, what: str) -> T:
    """Run `write` in its own transaction, again on a fresh connection when the connection was
    lost (OperationalError, InterfaceError). Each write is one small transaction, so a retry
    repeats nothing that was committed, except in the rare case that the commit itself
    succeeded and only its acknowledgement was lost."""
    for attempt in range(WRITE_ATTEMPTS):
        try:
            with session_scope() as session:
                return write(session)
        except (OperationalError, InterfaceError) as e:
            if attempt == WRITE_ATTEMPTS - 1:
                raise
            delay_s = 0.25 * 2**attempt
            log.warning("%s: database connection lost (%s); retrying in %.2f s", what,
                        str(e).splitlines()[0][:200], delay_s)
            time.sleep(delay_s)
    raise AssertionError("unreachable")
