"""Remove what a killed process left behind: uploads of requests that never finished,
half-written dataset or model directories, and directories whose SQL row was never committed.

Only entries older than `min_age_s` are touched, so another API replica's upload in flight (or
a worker's model being exported right now) is never taken from under it.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.settings import Settings
from core.tables import Dataset, TunedModel

log = logging.getLogger("tuneserve.janitor")

# Far longer than any upload or model export takes; younger entries may still be in use.
DEFAULT_MIN_AGE_S = 3600.0


def _old(path: Path, now: float, min_age_s: float) -> bool:
    try:
        return now - path.stat().st_mtime > min_age_s
    except FileNotFoundError:
        return False


def _remove(path: Path, why: str) -> None:
    log.warning("removing %s: %s", path, why)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_orphans(settings: Settings, session: Session, min_age_s: float = DEFAULT_MIN_AGE_S) -> list[Path]:
    now = time.time()
    removed: list[Path] = []
    known_datasets = set(session.scalars(select(Dataset.id)).all())
    known_models = set(session.scalars(select(TunedModel.id)).all())
    checks = [
        (settings.uploads_dir, lambda p: "an upload whose request never finished"),
        (settings.datasets_dir, lambda p: None if p.name in known_datasets
            else "a dataset directory without a dataset row"),
        (settings.models_dir / "models", lambda p: None if p.name in known_models
            else "a model directory without a model row"),
    ]
    for root, reason_for in checks:
        if not root.is_dir():
            continue
        for entry in root.iterdir():
            reason = reason_for(entry)
            if reason and _old(entry, now, min_age_s):
                _remove(entry, reason)
                removed.append(entry)
    return removed
