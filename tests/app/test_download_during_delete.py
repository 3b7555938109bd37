"""A model download that overlaps DELETE /models/{id}, over a real HTTP server: the archive
that started arrives whole (every file, every byte), the delete answers 204 at once, and the
next download is a 404. Before the files were opened up front, the files not yet reached
when the delete landed were gone: a 200 and then a chunked body cut short."""

from __future__ import annotations

import io
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.helpers import register_model

# Sorted before config.json, so the stream is inside this file while the delete runs and
# every other file is still to be read; far larger than the socket buffers on both sides.
PADDING_NAME = "a_padding.bin"
PADDING_BYTES = 24 * 1024 * 1024


@pytest.fixture
def base_url(settings: Any) -> Iterator[str]:
    """The app served by uvicorn on a free local port, in a thread of this process."""
    import uvicorn

    from app.main import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_download_survives_a_delete_that_lands_mid_stream(settings: Any, base_url: str) -> None:
    model_id = register_model(settings)
    directory = settings.models_dir / "models" / model_id
    (directory / PADDING_NAME).write_bytes(os.urandom(PADDING_BYTES))
    expected = {p.relative_to(directory).as_posix(): p.read_bytes()
                for p in directory.rglob("*") if p.is_file()}

    with httpx.Client(base_url=base_url, timeout=60) as client:
        with client.stream("GET", f"/models/{model_id}/download") as resp:
            assert resp.status_code == 200
            chunks = resp.iter_raw(64 * 1024)
            body = bytearray(next(chunks))  # the stream has begun: headers and the first bytes
            deleted = client.delete(f"/models/{model_id}")
            assert deleted.status_code == 204, deleted.text
            assert not directory.exists()  # the files really went while the archive was unsent
            for chunk in chunks:
                body += chunk
        assert client.get(f"/models/{model_id}/download").status_code == 404

    assert len(body) > PADDING_BYTES  # the delete landed well before the end of the stream
    with tarfile.open(fileobj=io.BytesIO(bytes(body)), mode="r:gz") as archive:
        members = {m.name.removeprefix(f"{model_id}/"): m for m in archive.getmembers() if m.isfile()}
        assert set(members) == set(expected)
        for name, content in expected.items():
            extracted = archive.extractfile(members[name])
            assert extracted is not None and extracted.read() == content, name


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_model_deleted_before_its_files_are_opened_is_a_404(
    settings: Any, base_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The row read, then the delete, then the download: a 404 that says so, never a 200."""
    from app.serving import export

    model_id = register_model(settings)
    opened = threading.Event()
    original = export.Snapshot.__init__

    def delete_then_open(self: export.Snapshot, directory: Path, root_name: str) -> None:
        # A real delete over HTTP, run at the moment between the route's checks and the opens.
        with httpx.Client(base_url=base_url, timeout=60) as other:
            assert other.delete(f"/models/{model_id}").status_code == 204
        opened.set()
        original(self, directory, root_name)

    monkeypatch.setattr(export.Snapshot, "__init__", delete_then_open)
    with httpx.Client(base_url=base_url, timeout=60) as client:
        resp = client.get(f"/models/{model_id}/download")
    assert opened.is_set()
    assert resp.status_code == 404, resp.text[:300]
    assert "was deleted while its download was starting" in resp.json()["detail"]
