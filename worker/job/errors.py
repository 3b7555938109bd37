"""Whose fault a failed job was, in words the user can act on.

- data: the user's data or job settings (a label outside the list, no rows, a base model
  that is not a text classifier): fix them and start a new job.
- environment: the machine (a full disk, memory, a missing package, a model that cannot be
  fetched): fix it, then POST /jobs/{id}/resume continues from the last good checkpoint.
- bug: anything else is tuneserve's own; resuming retries from the last good checkpoint.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator

from sqlalchemy.exc import InterfaceError, OperationalError

from core.db import WRITE_ATTEMPTS
from worker.training.devices import is_oom
from worker.training.errors import ErrorKind, TrainingError

# torch.save reports a failed write as a RuntimeError from its zip writer ("PytorchStreamWriter
# failed writing file", "[enforce fail at inline_container.cc] unexpected pos", "iostream error"),
# safetensors as a SafetensorError naming the OS error: none is an OSError with an errno.
_DISK_FULL = re.compile(r"No space left on device|StorageFull|Disk quota exceeded|"
                        r"PytorchStreamWriter failed writing|inline_container\.cc|iostream error",
                        re.IGNORECASE)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(exc: BaseException, job_id: str) -> tuple[ErrorKind, str]:
    """(kind, message) for a job's `error_kind` and `error`."""
    resume = f"then POST /jobs/{job_id}/resume continues from the last good checkpoint."
    for link in _chain(exc):
        if isinstance(link, TrainingError):
            return link.kind, str(link) + (f" Once that is fixed, {resume[5:]}" if link.kind == "environment"
                                           else "")
    for link in _chain(exc):
        text = str(link)
        disk_full = isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT)
        if disk_full or _DISK_FULL.search(text):
            return "environment", (
                "The disk ran out of space while the worker was writing (a checkpoint or the tuned "
                f"model); nothing half-written was kept. Free space on the volume of TUNESERVE_MODELS_DIR "
                f"(DELETE /jobs/{{id}} of old jobs frees their checkpoints), {resume}")
        if isinstance(link, OperationalError | InterfaceError):
            return "environment", (
                "The database connection was lost and did not come back within "
                f"{WRITE_ATTEMPTS} tries ({text.splitlines()[0][:200] if text else type(link).__name__}). "
                f"Check that the database is up (GET /readyz), {resume}")
        if isinstance(link, MemoryError) or (isinstance(link, Exception) and is_oom(link)):
            return "environment", (
                f"The worker ran out of memory ({type(link).__name__}: {text[:200]}). Give the worker more "
                f"memory or run fewer jobs on it at once, {resume}")
        if isinstance(link, ImportError):
            package = link.name or text
            return "environment", (
                f"A Python package the worker needs is missing ({package}). Install it in the worker's "
                f"environment (pip install {package.split('.')[0]}) and restart the worker, {resume}")
        if isinstance(link, PermissionError):
            return "environment", (
                f"The worker may not write {link.filename or 'a file it needs'} (permission denied). "
                "Give the worker's user write access to TUNESERVE_MODELS_DIR and TUNESERVE_DATA_DIR, "
                f"{resume}")
    return "bug", (
        f"Training stopped on an unexpected error ({type(exc).__name__}: {exc}). This is a bug in "
        "tuneserve, not in your data: the job's events and the worker log have the details. "
        f"POST /jobs/{job_id}/resume retries from the last good checkpoint.")
