"""Stream a model directory as a tar.gz, chunk by chunk, never holding the archive in memory.

tarfile in stream mode writes into a file object and cannot be paused between reads, so the
archive is laid out here directly: per file a header block, the data, zero padding to 512
bytes; two zero blocks and padding to a 10 KiB record at the end, as tarfile itself writes.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

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


def _header(path: Path, arcname: str) -> tuple[bytes, int]:
    info = tarfile.TarInfo(arcname)
    stat = path.stat()
    info.mtime = int(stat.st_mtime)
    if path.is_dir():
        info.type, info.mode, info.size = tarfile.DIRTYPE, 0o755, 0
    else:
        info.mode, info.size = 0o644, stat.st_size
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape"), info.size


def iter_tar(directory: Path, root_name: str) -> Iterator[bytes]:
    """The uncompressed tar stream of `directory`, its contents under `root_name/`."""
    directory = Path(directory)
    written = 0
    header, _ = _header(directory, root_name)
    yield header
    written += len(header)
    for path in _entries(directory):
        header, size = _header(path, f"{root_name}/{path.relative_to(directory).as_posix()}")
        yield header
        written += len(header)
        if path.is_dir():
            continue
        remaining = size
        with path.open("rb") as f:
            while remaining > 0:
                chunk = f.read(min(READ_CHUNK, remaining))
                if not chunk:  # the file shrank while we read it: keep the header's size
                    chunk = tarfile.NUL * remaining
                remaining -= len(chunk)
                yield chunk
        written += size
        if size % BLOCK:
            yield tarfile.NUL * (BLOCK - size % BLOCK)
            written += BLOCK - size % BLOCK
    end = tarfile.NUL * (2 * BLOCK)
    written += len(end)
    yield end + tarfile.NUL * (-written % RECORD)


def iter_targz(directory: Path, root_name: str) -> Iterator[bytes]:
    """`iter_tar` through gzip (zlib with a gzip header and trailer: wbits=31)."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    for piece in iter_tar(directory, root_name):
        out = compressor.compress(piece)
        if out:
            yield out
    yield compressor.flush()
