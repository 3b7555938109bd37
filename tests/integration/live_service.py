"""A real service for the client, TensorBoard and dashboard tests: uvicorn serving the API on a
free port and a Celery worker, over one SQLite database and the embedded SQLite broker (its own,
so that this long-lived worker never takes a job of another test's Redis queue), with a tiny
model so a job takes seconds.

Package-scoped (tests/integration/conftest.py): one finished job, made by the CLI from a
seed-style config.ini, is what the CLI, TensorBoard and dashboard tests all read.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from tests.conftest import ROOT
from tests.integration.conftest import WorkerProcess, write_sentiment_csv

SEED_CONFIG = """\
[Path]
train_file = data/train.csv
dev_file = data/dev.csv
output_dir = ./output

[Hyperparameters]
model_name = {model}
epochs = 3
batch_size = 16
learning_rate = 3e-3
max_length = 32
dropout = 0.1

[Logging]
log_dir = ./logs
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveService:
    def __init__(self, directory: Path, env: dict[str, str], tiny_encoder_dir: Path) -> None:
        self.directory, self.env, self.tiny_encoder_dir = directory, env, tiny_encoder_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "api.log"
        self.api: subprocess.Popen[bytes] | None = None
        self.worker = WorkerProcess(env, directory / "worker.log")

    def start(self, timeout_s: float = 90) -> LiveService:
        self.start_api(timeout_s)
        self.worker.start()
        return self

    def start_api(self, timeout_s: float = 90) -> None:
        """uvicorn on this service's port, once it answers /readyz. Its log starts afresh."""
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
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(self.log_path.read_text()[-3000:])

    def stop_api(self) -> None:
        if self.api and self.api.poll() is None:
            self.api.terminate()
            try:
                self.api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.api.kill()
                self.api.wait()

    def stop(self) -> None:
        self.worker.stop()
        self.stop_api()


def cli(live: LiveService, *args: str) -> Any:
    """`tuneserve --url <live> ...` in-process; a wide terminal, so tables keep whole rows.

    COLUMNS alone is not enough in a long-lived test process: rich fixes a console's width when
    it is made if COLUMNS is set then, so the CLI's consoles are given the width for the call."""
    from app.cli import app
    from app.client.commands import common

    consoles = (common.console, common.err)
    saved = [(c._width, c._height) for c in consoles]
    for c in consoles:
        c.size = (200, 50)
    try:
        return CliRunner().invoke(app, ["--url", live.url, *args], env={"COLUMNS": "200"})
    finally:
        for c, (width, height) in zip(consoles, saved, strict=True):
            c._width, c._height = width, height


def run_seed_config_job(live: LiveService, project: Path) -> dict[str, Any]:
    """`tuneserve jobs create --config config.ini --watch`, as a seed user would run it."""
    (project / "data").mkdir()
    write_sentiment_csv(project / "data" / "train.csv", rows=80)
    write_sentiment_csv(project / "data" / "dev.csv", rows=24)
    config = project / "config.ini"
    config.write_text(SEED_CONFIG.format(model=live.tiny_encoder_dir), encoding="utf-8")
    result = cli(live, "jobs", "create", "--config", str(config), "--set", "logging_steps=1",
                 "--set", "warmup_ratio=0", "--watch")
    jobs = json.loads(cli(live, "jobs", "list", "--json").output)["data"]
    return {"result": result, "job": jobs[0], "project": project}
