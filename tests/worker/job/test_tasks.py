"""The train task in this process, end to end over a real database: the outcome, what stays
on disk, the job row against its metrics, and the model registered at the length it was
trained at (so /predict serves texts past the position limit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.db import session_scope
from core.store import TRAINING_STATE_FILE, checkpoints_dir, dir_size_bytes, job_dir
from core.tables import Checkpoint, Dataset, Job, TunedModel
from tests.conftest import make_tiny_classifier
from tests.worker.helpers import LABELS

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _queued_job(dataset_dir: Path, base_model: Path, **hp: Any) -> str:
    with session_scope() as session:
        dataset = Dataset(name="d", task="single_label", format="csv", encoding="utf-8", labels=LABELS,
                          sha256="0" * 64, storage_path=str(dataset_dir))
        session.add(dataset)
        session.flush()
        job = Job(dataset_id=dataset.id, base_model=str(base_model), task="single_label",
                  hyperparameters={"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "warmup_ratio": 0.0,
                                   "logging_steps": 1, **hp})
        session.add(job)
        session.flush()
        return job.id


def test_a_job_ends_with_its_model_one_checkpoint_and_agreeing_figures(
    client: Any, settings: Any, small_dataset_dir: Path, tmp_path: Path
) -> None:
    from worker.tasks import train

    # A model with 64 positions, asked for 512 tokens: trained, and served, at 64.
    base = make_tiny_classifier(tmp_path / "short-model", LABELS, max_positions=64)
    job_id = _queued_job(small_dataset_dir, base, max_seq_length=512)
    train(job_id)

    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job["error"]
    train_points = client.get(f"/jobs/{job_id}/metrics").json()["train"]
    # 20 rows, 8 per step: 3 steps an epoch, 2 epochs; the row and the metrics agree.
    assert [p["step"] for p in train_points] == [1, 2, 3, 4, 5, 6]
    assert job["step"] == train_points[-1]["step"] == job["total_steps"] == 6 and job["progress"] == 1.0

    # On disk: the newest checkpoint, with its training state, and the tuned model; the
    # other checkpoint rows stay (with their metrics) marked unavailable.
    on_disk = sorted(p.name for p in checkpoints_dir(settings.models_dir, job_id).iterdir())
    assert on_disk == ["step-6"]
    assert (checkpoints_dir(settings.models_dir, job_id) / "step-6" / TRAINING_STATE_FILE).is_file()
    with session_scope() as session:
        rows = session.query(Checkpoint).filter(Checkpoint.job_id == job_id).order_by(Checkpoint.step).all()
        assert [(r.step, r.available) for r in rows] == [(3, False), (6, True)]
        model = session.get(TunedModel, job["model_id"])
        assert model is not None
        model_bytes = model.size_bytes
        assert model.max_seq_length == 64
    assert job["disk_bytes"] == dir_size_bytes(job_dir(settings.models_dir, job_id)) + model_bytes
    assert client.get(f"/models/{job['model_id']}").json()["max_seq_length"] == 64

    long_text = " ".join(["goal"] * 700)  # 700 tokens, more than the 64 positions
    resp = client.post("/predict", json={"model_id": job["model_id"], "texts": [long_text, "a vote"]})
    assert resp.status_code == 200, resp.text
    assert [p["truncated"] for p in resp.json()["predictions"]] == [True, False]


def test_a_failed_job_says_whose_fault_it_was(
    client: Any, settings: Any, small_dataset_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    from worker.tasks import train

    # A label index outside the dataset's list: the user's data.
    job_id = _queued_job(small_dataset_dir, model_dir)
    with session_scope() as session:
        dataset = session.get(Dataset, session.get(Job, job_id).dataset_id)  # type: ignore[union-attr]
        assert dataset is not None
        dataset.labels = LABELS[:2]
    train(job_id)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["error_kind"] == "data"
    assert "outside the 2 labels" in job["error"]
    events = client.get(f"/jobs/{job_id}/events").json()
    assert events[-1]["kind"] == "failed" and events[-1]["data"]["error_kind"] == "data"


def test_a_job_failed_by_its_environment_resumes_on_request_from_its_last_checkpoint(
    client: Any, settings: Any, small_dataset_dir: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.settings import get_settings
    from worker.tasks import train

    # A worker whose device "runs out of memory" from step 3 on, whatever the micro-batch, and
    # that checkpoints after every step.
    for key, value in {"FAULT_OOM_ABOVE_MICRO_BATCH": "0", "FAULT_OOM_FROM_STEP": "3",
                       "CHECKPOINT_INTERVAL_S": "0"}.items():
        monkeypatch.setenv(f"TUNESERVE_{key}", value)
    get_settings.cache_clear()
    job_id = _queued_job(small_dataset_dir, model_dir, micro_batch_size=8)
    train(job_id)
    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["error_kind"] == "environment", job["error"]
    assert "Out of memory at step 3" in job["error"] and f"POST /jobs/{job_id}/resume" in job["error"]
    assert job["step"] == 2

    # The machine is fixed (no more fault); the user resumes the job.
    for key in ("FAULT_OOM_ABOVE_MICRO_BATCH", "FAULT_OOM_FROM_STEP"):
        monkeypatch.delenv(f"TUNESERVE_{key}")
    get_settings.cache_clear()
    assert client.post(f"/jobs/{job_id}/resume").status_code == 202
    train(job_id)  # the redelivered task, run here
    job = client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["error"] is None and job["error_kind"] is None
    events = client.get(f"/jobs/{job_id}/events").json()
    assert [e["data"]["step"] for e in events if e["kind"] == "resumed"] == [2]
    assert [p["step"] for p in client.get(f"/jobs/{job_id}/metrics").json()["train"]] == [1, 2, 3, 4, 5, 6]
    assert job["step"] == 6 and job["micro_batch_size"] == 8  # the same effective batch and split
