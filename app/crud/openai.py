"""Data access for the OpenAI-compatible routes: OpenAI's cursor pagination (`after` an id) over
files (datasets uploaded through /v1/files) and chat jobs. Keyword-only, rows, no HTTP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from app.auth import Principal
from core.tables import Dataset, Job, JobEvent


def _after(session: Session, model: Any, after: str | None, newest_first: bool) -> Any:
    """The WHERE clause for rows past the row `after` in (created_at, id) order; None: no cursor."""
    if after is None:
        return None
    cursor = session.get(model, after)
    if cursor is None:
        return False
    if newest_first:
        return or_(model.created_at < cursor.created_at,
                   and_(model.created_at == cursor.created_at, model.id < cursor.id))
    return or_(model.created_at > cursor.created_at,
               and_(model.created_at == cursor.created_at, model.id > cursor.id))


def _page(session: Session, query: Any, model: Any, *, after: str | None, limit: int,
          newest_first: bool) -> tuple[Sequence[Any], bool]:
    where = _after(session, model, after, newest_first)
    if where is False:
        return [], False
    if where is not None:
        query = query.where(where)
    order = (model.created_at.desc(), model.id.desc()) if newest_first else (model.created_at, model.id)
    rows = session.scalars(query.order_by(*order).limit(limit + 1)).all()
    return rows[:limit], len(rows) > limit


def list_files(session: Session, *, principal: Principal, after: str | None, limit: int,
               newest_first: bool = True) -> tuple[Sequence[Dataset], bool]:
    """(files, whether more follow)."""
    query = principal.scope(select(Dataset), Dataset).where(Dataset.purpose.is_not(None))
    return _page(session, query, Dataset, after=after, limit=limit, newest_first=newest_first)


def list_chat_jobs(session: Session, *, principal: Principal, after: str | None,
                   limit: int) -> tuple[Sequence[Job], bool]:
    """(chat jobs newest first, whether more follow): what /v1/fine_tuning/jobs lists."""
    query = principal.scope(select(Job), Job).where(Job.task == "chat")
    return _page(session, query, Job, after=after, limit=limit, newest_first=True)


def tokens_per_epoch(session: Session, *, job_id: str) -> int | None:
    """What the chat task counted in one epoch (its `tokens` event), or None."""
    event = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "tokens")
                            .order_by(JobEvent.id.desc()).limit(1)).first()
    value = (event.data or {}).get("train_tokens_per_epoch") if event is not None else None
    return int(value) if isinstance(value, int | float) else None
