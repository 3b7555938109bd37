"""A job's events as rows, written the same way by whoever writes them (the worker's sink, its
comparisons, the stop handler): JSON-safe data, each event its own small transaction with retry
when the database connection was lost."""

from __future__ import annotations

import math
from typing import Any

from core.db import write_with_retry
from core.tables import JobEvent


def json_safe(value: Any) -> Any:
    """NaN and infinities are not JSON; PostgreSQL's JSON type refuses them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return json_safe(value.item())
    return value


def event_row(job_id: str, kind: str, message: str, data: dict[str, Any] | None = None) -> JobEvent:
    return JobEvent(job_id=job_id, kind=kind, message=message, data=json_safe(data))


def add_event(job_id: str, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
    write_with_retry(lambda session: session.add(event_row(job_id, kind, message, data)),
                     what=f"job {job_id}: event {kind}")
