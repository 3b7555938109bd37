"""Stream a model directory as a tar.gz, chunk by chunk, never holding the archive in memory.

tarfile in stream mode writes into a file object and cannot be paused between reads, so the
archive is laid out here directly: per file a header block, the data, zero padding to 512
bytes; two zero blocks and padding to a 10 KiB record at the end, as tarfile itself writes.

The files are opened before the response starts (`Snapshot`): an open file outlives its
unlinking, so a `DELETE /models/{id}` during the download removes the directory without
cutting the archive short, and a model already gone is a 404 rather than a 200 that breaks.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
READ_CHUNK = 1 << 20
# Weights are float noise to deflate (a few percent smaller at any level); level 1 spends
# the least CPU of the API process on them.
GZIP_LEVEL = 1


def _entries(directory: Path) -> list[Path]:
    """Directories and regular files, parents first, sorted so the archive is reproducible.
    Symlinks are skipped: an export carries files, never pointers out of the store."""
    return sorted(p for p in directory.rglob("*") if not p.is_symlink() and (p.is_file() or p.is_dir()))


@dataclass
class _Member:
    arcname: str
    mtime: int
    size: int
    file: BinaryIO | None  # None for a directory


class Snapshot:
    """Every file of a directory opened, with the size and time of what was opened: the
    archive `iter_tar` writes from it is whole whatever happens to the paths meanwhile.
    A model directory holds a few dozen files at most, so holding them open is cheap."""

    def __init__(self, directory: Path, root_name: str) -> None:
        self.members: list[_Member] = []
        try:
            self.members.append(_Member(root_name, int(directory.stat().st_mtime), 0, None))
            for path in _entries(directory):
                arcname = f"{root_name}/{path.relative_to(directory).as_posix()}"
                if path.is_dir():
                    self.members.append(_Member(arcname, int(path.stat().st_mtime), 0, None))
                    continue
                f = path.open("rb")
                info = os.fstat(f.fileno())
                self.members.append(_Member(arcname, int(info.st_mtime), info.st_size, f))
                if not stat.S_ISREG(info.st_mode):  # swapped for something else after the listing
                    raise FileNotFoundError(f"{path} is no longer a regular file")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for member in self.members:
            if member.file is not None:
                member.file.close()


def _header(member: _Member) -> bytes:
    info = tarfile.TarInfo(member.arcname)
    info.mtime = member.mtime
    if member.file is None:
        info.type, info.mode, info.size = tarfile.DIRTYPE, 0o755, 0
    else:
        info.mode, info.size = 0o644, member.size
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def iter_tar(snapshot: Snapshot) -> Iterator[bytes]:
    """The uncompressed tar stream of the snapshot's files; closes them when done."""
    written = 0
    try:
        for member in snapshot.members:
            header = _header(member)
            yield header
            written += len(header)
            if member.file is None:
                continue
            remaining = member.size
            while remaining > 0:
                chunk = member.file.read(min(READ_CHUNK, remaining))
                if not chunk:  # the file shrank while we read it: keep the header's size
                    chunk = tarfile.NUL * remaining
                remaining -= len(chunk)
                yield chunk
            written += member.size
            if member.size % BLOCK:
                yield tarfile.NUL * (BLOCK - member.size % BLOCK)
                written += BLOCK - member.size % BLOCK
        end = tarfile.NUL * (2 * BLOCK)
        written += len(end)
        yield end + tarfile.NUL * (-written % RECORD)
    finally:
        snapshot.close()


def iter_targz(snapshot: Snapshot) -> Iterator[bytes]:
    """`iter_tar` through gzip (zlib with a gzip header and trailer: wbits=31)."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    for piece in iter_tar(snapshot):
        out = compressor.compress(piece)
        if out:
            yield out
    yield compressor.flush()
