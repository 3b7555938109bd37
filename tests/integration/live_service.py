"""A real service for the client tests: uvicorn serving the API on a free port and a Celery worker,
over one SQLite database and the Redis test database, with a tiny model so a job takes seconds.

Module-scoped (see tests/integration/test_cli.py): one finished job is what the CLI, the
TensorBoard and the dashboard tests all read, so the suite trains it once.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT
from tests.integration.conftest import WorkerProcess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveService:
    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory, self.env = directory, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "api.log"
        self.api: subprocess.Popen[bytes] | None = None
        self.worker = WorkerProcess(env, directory / "worker.log")

    def start(self, timeout_s: float = 90) -> LiveService:
        self.api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
             "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError(f"the API exited at start:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise TimeoutError(self.log_path.read_text()[-3000:])
        self.worker.start()
        return self

    def stop(self) -> None:
        self.worker.stop()
        if self.api and self.api.poll() is None:
            self.api.terminate()
            try:
                self.api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.api.kill()
                self.api.wait()
