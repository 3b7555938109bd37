"""The worker's health check, for `docker compose` (and any supervisor).

A training worker runs the solo pool, so while it trains it answers no remote-control command:
`celery inspect ping` would call a busy, healthy worker dead. Instead a daemon thread beside the
task checks that the broker and the database answer and, when both do, touches a file; the
health check (`python -m worker.job.health`) passes while that file is fresh. A hung process, a
lost broker or a lost database all let it go stale.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from pathlib import Path

from core.settings import get_settings

log = logging.getLogger("tuneserve.worker.job.health")

# The check fails after this many intervals without a successful beat: one slow database
# answer or broker reconnect is not yet unhealthy.
STALE_AFTER_BEATS = 4


def problems() -> list[str]:
    """What this process cannot reach now (empty when it is healthy)."""
    from sqlalchemy import text

    from core.db import new_session
    from core.queue import broker_reachable

    found = []
    broker = broker_reachable()
    if broker:
        found.append(f"broker: {broker}")
    try:
        with new_session() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        found.append(f"database: {type(exc).__name__}: {exc}")
    return found


def beat_forever(path: Path, stop: threading.Event, interval_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        found = problems()
        if found:
            log.warning("worker health: %s", "; ".join(found))
        else:
            path.touch()
        if stop.wait(interval_s):
            return


def check(path: Path, interval_s: float, now: float | None = None) -> str | None:
    """None when the worker beat recently, else why it is unhealthy."""
    if not path.exists():
        return f"{path} does not exist: the worker has not started, or cannot reach its broker and database"
    age_s = (now or time.time()) - path.stat().st_mtime
    if age_s > STALE_AFTER_BEATS * interval_s:
        return (f"last healthy beat {age_s:.0f}s ago (more than {STALE_AFTER_BEATS} x {interval_s:.0f}s): "
                "the worker cannot reach its broker or database, or is hung; see its log")
    return None


def main() -> int:
    settings = get_settings()
    if settings.worker_health_file is None:
        sys.stderr.write("TUNESERVE_WORKER_HEALTH_FILE is not set: the worker writes no health beat\n")
        return 1
    reason = check(settings.worker_health_file, settings.worker_health_interval_s)
    if reason:
        sys.stderr.write(reason + "\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
