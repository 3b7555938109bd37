"""GET /jobs/{id}/events/stream: a job's events, metric points and progress as Server-Sent Events.

Apart from routes/jobs.py because it is the one long-lived, async route of the resource: it
polls SQL (where the worker writes every event and point as it happens, whatever the broker)
in short sessions, so a watching browser holds no database connection between polls.

Wire format (FastAPI's own EventSourceResponse, which also sends the keep-alive comments):
- `event: log`, `id: <event id>`, data: the event as GET /jobs/{id}/events gives it;
- `event: metric`, `id: <event id>:<point id>`, data: `{"kind", "step", "epoch", ...values}`;
- `event: progress`, no id, data: the job's state and progress, whenever they change;
- `event: end`, data: the whole job, once it is finished; then the stream closes.

`Last-Event-ID: <event id>[:<point id>]` resumes after that event (and point). A bare event id
resumes the metric points after the last one written before that event, which is where the
stream had got to: events and points go out in the order they were written.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import func, select

from app.crud import jobs as crud
from app.deps import Authenticated, PrincipalDep
from app.schemas.common import JobIdPath, errors
from app.schemas.jobs import JobEventPublic, JobPublic
from core.db import new_session
from core.jobstate import FINAL_STATES
from core.tables import JobEvent, MetricPoint

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Authenticated],
                   responses=errors(400, 401, 404, 422))

# How often the stream looks for new rows: the worker writes progress at most once a second.
POLL_INTERVAL_S = 0.5
# The worker records a job's final state and then its final event in two transactions; once the
# state is final, wait this long at most for that event before closing the stream.
FINAL_EVENT_GRACE_S = 3.0
PROGRESS_FIELDS = ("state", "progress", "epoch", "step", "total_steps", "eta_s", "micro_batch_size",
                   "grad_accum_steps", "best_metric_name", "best_metric", "error", "model_id")


def _existing_job_id(job_id: JobIdPath, principal: PrincipalDep) -> str:
    """404 before the stream starts (once it has, the status line is sent); another key's job is
    as missing as one that does not exist."""
    with new_session() as session:
        if principal.visible(crud.get_job(session, job_id=job_id)) is None:
            raise HTTPException(404, f"No job with id {job_id!r}; GET /jobs lists them.")
    return job_id


# 0 to 2**31 - 1 (MAX_INT32) in decimal, leading zeros allowed: the ids this stream sends.
_INT32 = ("0*(?:[0-9]{1,9}|1[0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}|2147[0-3][0-9]{5}"
          "|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}|21474836[0-3][0-9]|214748364[0-7])")
# `E` or `E:M`, or blank (no cursor). Checked as the document states it, so the two agree.
CURSOR_PATTERN = f"^[ \\t]*(?:({_INT32})(?::({_INT32}))?)?[ \\t]*$"


def parse_cursor(
    last_event_id: Annotated[str | None, Header(json_schema_extra={"pattern": CURSOR_PATTERN})] = None,
) -> tuple[int, int | None]:
    """`E` or `E:M` -> (event id, point id or None when only the event id was given). A dependency,
    so that a malformed one is a 400 before the stream starts."""
    if last_event_id is None:
        return 0, 0
    match = re.fullmatch(CURSOR_PATTERN, last_event_id)
    if match is None:
        raise HTTPException(400, f"Last-Event-ID {last_event_id!r} is not an id this stream sent; "
                                 "it sends '<event id>' or '<event id>:<point id>'.")
    head, tail = match.groups()
    if head is None:
        return 0, 0
    return int(head), int(tail) if tail is not None else None


class _Poll:
    """One round of reading: new events, new points, the job row. Runs in a worker thread."""

    def __init__(self, job_id: str, event_id: int, point_id: int | None) -> None:
        self.job_id, self.event_id, self.point_id = job_id, event_id, point_id
        self.last_kind: str | None = None  # of the last event sent (or resumed after)
        self._resumed = False

    def __call__(self) -> tuple[list[ServerSentEvent], dict[str, Any]]:
        with new_session() as session:
            if not self._resumed:
                self._resume(session)
            job = crud.get_job(session, job_id=self.job_id)
            if job is None:  # deleted while watched
                return [], {}
            events = crud.list_events(session, job_id=self.job_id, since_id=self.event_id)
            points = session.scalars(select(MetricPoint).where(
                MetricPoint.job_id == self.job_id, MetricPoint.id > self.point_id)
                .order_by(MetricPoint.id)).all()
            # In the order they were written, so a cursor names everything before it.
            timeline: list[tuple[Any, int, Any]] = (
                [(e.time, 0, e) for e in events] + [(p.created_at, 1, p) for p in points])
            timeline.sort(key=lambda item: (_comparable(item[0]), item[1], item[2].id))
            out: list[ServerSentEvent] = []
            for _, _, row in timeline:
                if isinstance(row, JobEvent):
                    self.event_id = row.id
                    self.last_kind = row.kind
                    out.append(ServerSentEvent(
                        event="log", id=str(row.id),
                        data=JobEventPublic.model_validate(row).model_dump(mode="json")))
                else:
                    self.point_id = row.id
                    out.append(ServerSentEvent(
                        event="metric", id=f"{self.event_id}:{row.id}",
                        data={"kind": row.kind, "step": row.step, "epoch": row.epoch, **row.values}))
            snapshot = JobPublic.model_validate(job).model_dump(mode="json")
            return out, snapshot

    def _resume(self, session: Any) -> None:
        self._resumed = True
        event = session.get(JobEvent, self.event_id) if self.event_id else None
        if event is not None:
            self.last_kind = event.kind
        if self.point_id is None:
            last = None if event is None else session.scalar(select(func.max(MetricPoint.id)).where(
                MetricPoint.job_id == self.job_id, MetricPoint.created_at <= event.time))
            self.point_id = int(last or 0)


def _comparable(moment: Any) -> Any:
    # SQLite hands back naive datetimes, PostgreSQL aware ones; both are UTC.
    return moment.replace(tzinfo=None) if moment is not None else moment


@router.get("/{job_id}/events/stream", response_class=EventSourceResponse)
async def stream_job_events(
    job_id: Annotated[str, Depends(_existing_job_id)],
    cursor: Annotated[tuple[int, int | None], Depends(parse_cursor)],
) -> AsyncIterator[ServerSentEvent]:
    """Live events, metric points and progress (Server-Sent Events); ends when the job ends."""
    poll = _Poll(job_id, *cursor)
    last_progress: dict[str, Any] | None = None
    final_since: float | None = None
    while True:
        out, snapshot = await run_in_threadpool(poll)
        for item in out:
            yield item
        if not snapshot:
            return
        progress = {k: snapshot[k] for k in PROGRESS_FIELDS}
        if progress != last_progress:
            last_progress = progress
            yield ServerSentEvent(event="progress", data={"id": job_id, **progress})
        if snapshot["state"] in FINAL_STATES:
            final_since = final_since or time.monotonic()
            # The worker's final event is named after the final state.
            if poll.last_kind in FINAL_STATES or time.monotonic() - final_since > FINAL_EVENT_GRACE_S:
                yield ServerSentEvent(event="end", data=snapshot)
                return
        await asyncio.sleep(POLL_INTERVAL_S)
