"""Copying an upload to disk in chunks, with the size limit enforced while it streams."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from app.ingest.errors import UploadTooLarge

CHUNK_BYTES = 1024 * 1024
# Control characters and path separators never reach a name we show or store.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


class AsyncReadable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


@dataclass(frozen=True)
class SavedUpload:
    path: Path
    filename: str  # the client's name reduced to a safe base name, for display only
    sha256: str
    size_bytes: int


def safe_filename(raw: str | None, default: str = "upload") -> str:
    """The base name of a client-supplied file name: `../../x.csv` becomes `x.csv`.

    The name is only ever shown and stored; files on disk are named by the service."""
    name = PurePosixPath((raw or "").replace("\\", "/")).name
    name = _UNSAFE.sub("", name).strip().lstrip(".")
    return name[:200] or default


async def save_upload(
    upload: AsyncReadable, *, filename: str | None, dest: Path, limit_bytes: int
) -> SavedUpload:
    """Stream `upload` into `dest`, hashing as it goes; past `limit_bytes` stop and raise."""
    digest = hashlib.sha256()
    size = 0
    shown = safe_filename(filename)
    with dest.open("wb") as out:
        while chunk := await upload.read(CHUNK_BYTES):
            size += len(chunk)
            if size > limit_bytes:
                raise UploadTooLarge(f"'{shown}' goes past the upload limit of {limit_bytes} bytes")
            digest.update(chunk)
            out.write(chunk)
    return SavedUpload(path=dest, filename=shown, sha256=digest.hexdigest(), size_bytes=size)
