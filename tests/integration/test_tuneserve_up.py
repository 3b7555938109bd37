"""The README's run command, `tuneserve up`, as a user runs it: embedded defaults (SQLite and
the SQLite broker under ./var), the real HTTP server and worker, the real MiniLM, real data."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, SHARED_DATA

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    def __init__(self, cwd: Path) -> None:
        self.port = _free_port()
        self.log = cwd / "up.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNESERVE_")}
        env.update({"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "up", "--port", str(self.port)],
            cwd=cwd, env={**env, "PYTHONPATH": str(ROOT)}, stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.http.get("/readyz").status_code == 200 and "ready." in self.log.read_text():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(self.log.read_text())

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=60)


def test_tuneserve_up_starts_and_stops_cleanly(tmp_path: Path) -> None:
    service = Service(tmp_path)
    try:
        service.wait_ready()
        assert service.http.get("/healthz").json() == {"status": "ok"}
    finally:
        code = service.stop()
    assert code == 0
    text = service.log.read_text()
    assert f"API on http://127.0.0.1:{service.port}" in text and "tuneserve: stopped" in text
    # Embedded defaults: everything under ./var of the directory it was started in.
    assert (tmp_path / "var" / "tuneserve.sqlite").is_file()
    assert (tmp_path / "var" / "broker.sqlite").is_file()


def test_korean_hate_speech_fine_tune_beats_the_majority_baseline(tmp_path: Path) -> None:
    """Through the HTTP API alone: upload, train the real MiniLM, watch, predict."""
    lines = (SHARED_DATA / "korean_hate_speech_train.tsv").read_text(encoding="utf-8").splitlines()
    train_file = tmp_path / "hate_train.tsv"
    train_file.write_text("\n".join(lines[:481]) + "\n", encoding="utf-8")  # header + 480 rows
    dev_file = SHARED_DATA / "korean_hate_speech_dev.tsv"

    service = Service(tmp_path)
    try:
        service.wait_ready()
        with train_file.open("rb") as f, dev_file.open("rb") as v:
            resp = service.http.post("/datasets", files={"file": (train_file.name, f),
                                                         "validation_file": (dev_file.name, v)})
        assert resp.status_code == 201, resp.text
        dataset = resp.json()
        assert dataset["text_column"] == "comments" and dataset["label_columns"] == ["hate"]
        resp = service.http.post("/jobs", json={"dataset_id": dataset["id"], "hyperparameters": {
            "epochs": 3, "batch_size": 16, "learning_rate": 1e-4, "max_seq_length": 96}})
        assert resp.status_code == 201, resp.text
        job_id = resp.json()["id"]

        seen_progress: list[float] = []
        deadline = time.monotonic() + 600
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = service.http.get(f"/jobs/{job_id}").json()
            seen_progress.append(job["progress"])
            if job["state"] in {"succeeded", "failed", "cancelled"}:
                break
            time.sleep(1)
        assert job["state"] == "succeeded", (job, service.log.read_text()[-5000:])
        assert any(0 < p < 1 for p in seen_progress), "progress was never seen mid-run"

        metrics = service.http.get(f"/jobs/{job_id}/metrics").json()
        best_f1 = metrics["summary"]["best"]["f1_macro"]
        dev_labels = [line.split("\t")[3] for line in dev_file.read_text().splitlines()[1:]]
        majority = Counter(dev_labels).most_common(1)[0][1] / len(dev_labels)
        # Predicting the majority class everywhere: F1 2p/(1+p) on that class, 0 on the others.
        baseline_f1 = (2 * majority / (1 + majority)) / 3
        assert best_f1 > baseline_f1 + 0.05, (best_f1, baseline_f1)
        comparison = metrics["comparison"]["splits"]["validation"]
        assert comparison["tuned"]["f1_macro"] == pytest.approx(best_f1, abs=1e-6)

        pred = service.http.post("/predict", json={"model_id": job["model_id"],
                                                   "texts": ["정말 멋진 공연이었어요", "이 쓰레기 같은 놈"]})
        assert pred.status_code == 200, pred.text
        for p in pred.json()["predictions"]:
            assert p["label"] in {"hate", "offensive", "none"}
            assert sum(p["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    finally:
        assert service.stop() == 0
