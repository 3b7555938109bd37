"""The worker's health beat and the compose health check (`python -m worker.job.health`), over the
real Redis test database and a SQLite database; an unreachable broker leaves the file stale."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REDIS_URL, ROOT, configure
from worker.job.health import beat_forever, check, problems


def _run_check(env_extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "worker.job.health"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_beat_keeps_the_file_fresh_and_the_check_passes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            database_url: str) -> None:
    configure(monkeypatch, tmp_path, database_url, broker_url=REDIS_URL)
    health_file = tmp_path / "worker.job.health"
    stop = threading.Event()
    thread = threading.Thread(target=beat_forever, args=(health_file, stop, 0.2), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not health_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert check(health_file, 0.2) is None
        env = {"TUNESERVE_WORKER_HEALTH_FILE": str(health_file), "TUNESERVE_WORKER_HEALTH_INTERVAL_S": "5"}
        assert _run_check(env).returncode == 0
    finally:
        stop.set()
        thread.join(timeout=10)
    stale = check(health_file, 0.2, now=time.time() + 10)
    assert stale is not None and "last healthy beat" in stale
    result = _run_check({"TUNESERVE_WORKER_HEALTH_FILE": str(tmp_path / "never-written")})
    assert result.returncode == 1 and "does not exist" in result.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_unreachable_broker_is_named_and_no_beat_is_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str
) -> None:
    configure(monkeypatch, tmp_path, database_url, broker_url="redis://127.0.0.1:9/0")
    found = problems()
    assert len(found) == 1 and found[0].startswith("broker: ")
    health_file = tmp_path / "worker.job.health"
    stop = threading.Event()
    stop.set()  # one round only
    beat_forever(health_file, stop, 0.1)
    assert not health_file.exists()
