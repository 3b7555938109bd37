"""Resume, delete, bytes on disk and timestamps of jobs through the API, on SQLite and
PostgreSQL (no worker: the job rows and files are made as a worker leaves them)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from core.db import session_scope
from core.store import TRAINING_STATE_FILE, checkpoints_dir, dir_size_bytes, job_dir
from core.tables import Checkpoint, Dataset, Job, JobEvent, MetricPoint, TunedModel
from tests.serving.helpers import register_model


def _finished_job(settings: Any, state: str, *, steps: tuple[int, ...] = (3, 6), model_id: str | None = None,
                  error: str | None = None) -> str:
    """A job as a worker leaves it: rows for events, metrics, checkpoints, and checkpoint files."""
    with session_scope() as session:
        dataset = Dataset(name="d.csv", task="single_label", format="csv", encoding="utf-8",
                          labels=["neg", "pos"], sha256="0" * 64,
                          storage_path=str(settings.datasets_dir / "d"))
        session.add(dataset)
        session.flush()
        job = Job(dataset_id=dataset.id, base_model="tiny", task="single_label", state=state, step=steps[-1],
                  error=error, error_kind="environment" if error else None, model_id=model_id)
        session.add(job)
        session.flush()
        session.add(JobEvent(job_id=job.id, kind=state, message="ended"))
        for step in steps:
            session.add(MetricPoint(job_id=job.id, kind="train", step=step, epoch=step / 3,
                                    values={"loss": 1.0}))
            path = checkpoints_dir(settings.models_dir, job.id) / f"step-{step}"
            path.mkdir(parents=True)
            (path / "model.safetensors").write_bytes(b"w" * 1000)
            (path / TRAINING_STATE_FILE).write_bytes(b"s" * 2000)
            session.add(Checkpoint(job_id=job.id, step=step, epoch=step / 3, path=str(path)))
        return job.id


def _rows(model: type, job_id: str) -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(model).where(model.job_id == job_id)) or 0


def test_a_failed_job_resumes_from_its_last_checkpoint(client: Any, settings: Any) -> None:
    job_id = _finished_job(settings, "failed", error="The disk ran out of space.")
    resp = client.post(f"/jobs/{job_id}/resume")
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["state"] == "queued" and body["error"] is None and body["error_kind"] is None
    assert body["resume_from_step"] == 6
    assert body["finished_at"] is None
    events = client.get(f"/jobs/{job_id}/events").json()
    assert events[-1]["kind"] == "resume_requested"
    assert "from the checkpoint at step 6" in events[-1]["message"]
    # Queued again: a second resume (or one of a running job) conflicts and says why.
    again = client.post(f"/jobs/{job_id}/resume")
    assert again.status_code == 409 and "only a failed or cancelled job" in again.json()["detail"]


def test_only_failed_or_cancelled_jobs_resume(client: Any, settings: Any) -> None:
    done = _finished_job(settings, "succeeded")
    resp = client.post(f"/jobs/{done}/resume")
    assert resp.status_code == 409
    assert "is succeeded" in resp.json()["detail"] and "POST /jobs" in resp.json()["detail"]
    cancelled = _finished_job(settings, "cancelled", steps=(2,))
    assert client.post(f"/jobs/{cancelled}/resume").status_code == 202
    assert client.post("/jobs/job_nope/resume").status_code == 404


def test_delete_removes_rows_and_files_and_keeps_the_model(client: Any, settings: Any) -> None:
    model_id = register_model(settings)
    job_id = _finished_job(settings, "succeeded", model_id=model_id)
    job = client.get(f"/jobs/{job_id}").json()
    model_bytes = client.get(f"/models/{model_id}").json()["size_bytes"]
    assert job["disk_bytes"] == dir_size_bytes(job_dir(settings.models_dir, job_id)) + model_bytes
    assert job["disk_bytes"] == 2 * 3000 + model_bytes

    resp = client.delete(f"/jobs/{job_id}")
    assert resp.status_code == 204 and resp.content == b""
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert not job_dir(settings.models_dir, job_id).exists()
    for model in (JobEvent, MetricPoint, Checkpoint):
        assert _rows(model, job_id) == 0
    # The tuned model is the user's to keep: it is still listed and served.
    assert client.get(f"/models/{model_id}").status_code == 200
    assert client.post("/predict", json={"model_id": model_id, "texts": ["hi"]}).status_code == 200
    assert client.delete(f"/jobs/{job_id}").status_code == 404


def test_delete_with_its_model_and_refusals(client: Any, settings: Any) -> None:
    model_id = register_model(settings)
    job_id = _finished_job(settings, "succeeded", model_id=model_id)
    assert client.delete(f"/jobs/{job_id}", params={"delete_model": "true"}).status_code == 204
    assert client.get(f"/models/{model_id}").status_code == 404
    with session_scope() as session:
        assert session.get(TunedModel, model_id) is None

    running = _finished_job(settings, "running")
    resp = client.delete(f"/jobs/{running}")
    assert resp.status_code == 409
    assert "cancel it first" in resp.json()["detail"]
    assert job_dir(settings.models_dir, running).is_dir() and _rows(Checkpoint, running) == 2


def _times(value: Any, key: str = "") -> list[str]:
    """Every timestamp in a response body: keys named time or ending in _at."""
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _times(v, k)]
    if isinstance(value, list):
        return [t for v in value for t in _times(v, key)]
    return [value] if isinstance(value, str) and (key == "time" or key.endswith("_at")) else []


def test_every_timestamp_has_a_zone(client: Any, settings: Any) -> None:
    model_id = register_model(settings)
    job_id = _finished_job(settings, "succeeded", model_id=model_id)
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.dataset_id is not None
        job.started_at = job.finished_at = job.created_at
        dataset_id = job.dataset_id
    bodies = [client.get(path).json() for path in (
        f"/jobs/{job_id}", "/jobs", f"/jobs/{job_id}/events", f"/jobs/{job_id}/checkpoints",
        f"/models/{model_id}", "/models", f"/datasets/{dataset_id}", "/datasets")]
    found = [t for body in bodies for t in _times(body)]
    # created/started/finished twice (one job, in list and alone), 1 event, 2 checkpoints,
    # the model twice and the dataset twice.
    assert len(found) == 6 + 1 + 2 + 2 + 2
    for text in found:
        parsed = datetime.fromisoformat(text)
        assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0, text


def test_resume_queues_what_a_worker_would_resume(client: Any, settings: Any) -> None:
    # A cancelled job whose newest checkpoint lost its training state (pruned) resumes from the
    # newest one that still has it.
    job_id = _finished_job(settings, "cancelled", steps=(3, 6))
    (checkpoints_dir(settings.models_dir, job_id) / "step-6" / TRAINING_STATE_FILE).unlink()
    assert client.post(f"/jobs/{job_id}/resume").status_code == 202
    message = client.get(f"/jobs/{job_id}/events").json()[-1]["message"]
    assert "step 3" in message


def test_resume_without_any_checkpoint_starts_over(client: Any, settings: Any, tmp_path: Path) -> None:
    job_id = _finished_job(settings, "failed", steps=(1,), error="x")
    for path in checkpoints_dir(settings.models_dir, job_id).iterdir():
        (path / TRAINING_STATE_FILE).unlink()
    resp = client.post(f"/jobs/{job_id}/resume")
    assert resp.status_code == 202 and resp.json()["resume_from_step"] is None
    assert "starts from step 0" in client.get(f"/jobs/{job_id}/events").json()[-1]["message"]
