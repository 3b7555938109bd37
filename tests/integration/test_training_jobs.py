"""Training jobs through the HTTP API, run by a real Celery worker process on the Redis at
127.0.0.1:6379 (or the embedded SQLite broker), over PostgreSQL or SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import upload, wait_for_job, wait_until, write_sentiment_csv

pytestmark = pytest.mark.slow

TRAIN_KEYS = {"loss", "learning_rate", "samples_per_second", "micro_batch_size", "grad_accum_steps"}
EVAL_KEYS = {"loss", "accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted"}
FAST = {"epochs": 2, "batch_size": 16, "learning_rate": 5e-4, "max_seq_length": 32, "logging_steps": 1,
        "warmup_ratio": 0.0}


def _start(client: Any, tmp_path: Path, base_model: Path, **hp: Any) -> tuple[str, str]:
    dataset = upload(client, write_sentiment_csv(tmp_path / "sentiment.csv"))
    resp = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": str(base_model),
                                      "hyperparameters": {**FAST, **hp}})
    assert resp.status_code == 201, resp.text
    return dataset["id"], resp.json()["id"]


def _event_kinds(client: Any, job_id: str) -> list[str]:
    return [e["kind"] for e in client.get(f"/jobs/{job_id}/events").json()]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_job_trains_records_everything_and_registers_a_model(stack: Any, tmp_path: Path,
                                                             tiny_encoder_dir: Path) -> None:
    client, start_worker = stack()
    worker = start_worker()
    _, job_id = _start(client, tmp_path, tiny_encoder_dir)
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, worker=worker)
    assert job["state"] == "succeeded", job["error"]
    # 96 rows, 20% held out -> 76-77 train rows; 16 per step -> 5 steps per epoch, 2 epochs.
    assert job["total_steps"] == 10 and job["step"] == 10 and job["progress"] == 1.0
    assert job["micro_batch_size"] * job["grad_accum_steps"] == 16
    assert job["model_id"] and job["finished_at"] and job["attempts"] == 1

    metrics = client.get(f"/jobs/{job_id}/metrics").json()
    assert [p["step"] for p in metrics["train"]] == list(range(1, 11))
    for point in metrics["train"]:
        assert TRAIN_KEYS <= set(point)
    assert len(metrics["eval"]) == 2  # once per epoch
    for point in metrics["eval"]:
        assert EVAL_KEYS <= set(point)
    assert metrics["summary"]["best"]["f1_macro"] == max(p["f1_macro"] for p in metrics["eval"])
    assert metrics["summary"]["final"]["step"] == 10
    comparison = metrics["comparison"]
    assert comparison is not None and "validation" in comparison["splits"]
    validation = comparison["splits"]["validation"]
    assert set(validation["tuned"]) >= {"accuracy", "f1_macro", "per_class", "confusion_matrix"}
    # The baselines on the same rows; the tuned model's figures are those of its best evaluation.
    assert {"majority", "tfidf"} <= set(validation) and "base" not in validation
    assert validation["tuned"]["f1_macro"] == pytest.approx(metrics["summary"]["best"]["f1_macro"], abs=1e-6)

    checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()
    assert {c["step"] for c in checkpoints} >= {5, 10}
    assert sum(c["is_best"] for c in checkpoints) == 1

    kinds = _event_kinds(client, job_id)
    assert kinds[:4] == ["queued", "claimed", "batch_probe", "started"]
    assert kinds[-1] == "succeeded" and "model_ready" in kinds and "comparison" in kinds

    model = client.get(f"/models/{job['model_id']}").json()
    assert model["labels"] == ["negative", "positive"] and model["task"] == "single_label"
    pred = client.post("/predict", json={"model_id": job["model_id"], "texts": ["loved it, superb"]})
    assert pred.status_code == 200, pred.text
    assert pred.json()["predictions"][0]["label"] in {"negative", "positive"}

    # On demand, the worker recomputes the comparison (same figures: same models, same rows).
    assert client.post(f"/jobs/{job_id}/compare").status_code == 202
    wait_until(lambda: _event_kinds(client, job_id).count("comparison") == 2, timeout_s=60,
               what="the second comparison")
    again = client.get(f"/jobs/{job_id}/metrics").json()["comparison"]
    assert again["splits"]["validation"]["tuned"] == comparison["splits"]["validation"]["tuned"]
    assert again["created_at"] > comparison["created_at"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_injected_oom_mid_run_halves_the_micro_batch_and_keeps_the_effective_batch(
    stack: Any, tmp_path: Path, tiny_encoder_dir: Path
) -> None:
    # From optimizer step 3 on, any micro-batch above 4 "runs out of memory".
    client, start_worker = stack(fault_oom_above_micro_batch=4, fault_oom_from_step=3)
    worker = start_worker()
    _, job_id = _start(client, tmp_path, tiny_encoder_dir, epochs=1)
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, worker=worker)
    assert job["state"] == "succeeded", job["error"]
    assert job["micro_batch_size"] == 4 and job["grad_accum_steps"] == 4
    events = client.get(f"/jobs/{job_id}/events").json()
    probe = next(e for e in events if e["kind"] == "batch_probe")
    assert probe["data"]["micro_batch_size"] == 16
    ooms = [e for e in events if e["kind"] == "oom_recovered"]
    assert ooms, events
    assert ooms[0]["data"]["step"] == 3
    assert ooms[-1]["data"]["new_micro_batch_size"] == 4
    train = client.get(f"/jobs/{job_id}/metrics", params={"kind": "train"}).json()["train"]
    assert [p["step"] for p in train] == [1, 2, 3, 4, 5]  # every step once, none skipped
    assert all(p["micro_batch_size"] * p["grad_accum_steps"] == 16 for p in train)
    assert train[-1]["micro_batch_size"] == 4


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_sigkilled_worker_job_resumes_from_its_checkpoint_in_a_new_worker(
    stack: Any, tmp_path: Path, tiny_encoder_dir: Path
) -> None:
    # Slow steps so the kill lands mid-run; short lease so a new worker takes over quickly.
    client, start_worker = stack(fault_step_delay_s=0.4, job_lease_s=3, heartbeat_interval_s=0.5)
    first = start_worker()
    _, job_id = _start(client, tmp_path, tiny_encoder_dir, epochs=3, eval_strategy="steps", eval_steps=3)
    wait_until(lambda: any(c["step"] >= 3 for c in client.get(f"/jobs/{job_id}/checkpoints").json()),
               what="a first checkpoint")
    wait_until(lambda: client.get(f"/jobs/{job_id}").json()["step"] >= 4, what="a step past it")
    first.kill()
    killed_at = client.get(f"/jobs/{job_id}").json()["step"]
    assert client.get(f"/jobs/{job_id}").json()["state"] == "running"

    second = start_worker()
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, worker=second)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["step"] == job["total_steps"] == 15
    events = client.get(f"/jobs/{job_id}/events").json()
    kinds = [e["kind"] for e in events]
    assert "worker_lost" in kinds and "resumed" in kinds
    resumed = next(e for e in events if e["kind"] == "resumed")
    resumed_step = resumed["data"]["step"]
    assert 3 <= resumed_step <= killed_at
    # The new worker continued: no step before the checkpoint was trained a second time.
    train_steps = [p["step"] for p in client.get(f"/jobs/{job_id}/metrics").json()["train"]]
    assert train_steps.count(1) == 1 and sorted(set(train_steps)) == list(range(1, 16))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cancel_a_running_job_on_the_embedded_broker(stack: Any, tmp_path: Path,
                                                     tiny_encoder_dir: Path) -> None:
    client, start_worker = stack(embedded_broker=True, fault_step_delay_s=0.5, heartbeat_interval_s=0.2)
    worker = start_worker()
    _, job_id = _start(client, tmp_path, tiny_encoder_dir, epochs=5)
    wait_until(lambda: client.get(f"/jobs/{job_id}").json()["step"] >= 2, what="step 2")
    resp = client.post(f"/jobs/{job_id}/cancel")
    assert resp.status_code == 200 and resp.json()["state"] == "running"
    job = wait_for_job(client, job_id, {"cancelled", "succeeded", "failed"}, timeout_s=30, worker=worker)
    assert job["state"] == "cancelled"
    assert job["step"] < 25 and job["model_id"] is None
    assert "cancel_requested" in _event_kinds(client, job_id)
    # The worker is free for the next job.
    _, next_id = _start(client, tmp_path, tiny_encoder_dir, epochs=1)
    assert wait_for_job(client, next_id, {"succeeded", "failed"}, worker=worker)["state"] == "succeeded"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_base_model_that_cannot_load_fails_the_job_in_words(stack: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    client, start_worker = stack(embedded_broker=True)
    worker = start_worker()
    _, job_id = _start(client, tmp_path, broken)
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, worker=worker)
    assert job["state"] == "failed"
    assert str(broken) in job["error"]
    assert _event_kinds(client, job_id)[-1] == "failed"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_tuned_model_is_the_base_of_a_continued_fine_tune(stack: Any, tmp_path: Path,
                                                            tiny_encoder_dir: Path) -> None:
    client, start_worker = stack(fault_step_delay_s=0.3)
    worker = start_worker()
    dataset_id, first_id = _start(client, tmp_path, tiny_encoder_dir, epochs=1)
    first = wait_for_job(client, first_id, {"succeeded", "failed"}, worker=worker)
    assert first["state"] == "succeeded", first["error"]
    model_id = first["model_id"]

    resp = client.post("/jobs", json={"dataset_id": dataset_id, "base_model": model_id,
                                      "hyperparameters": {**FAST, "epochs": 1}})
    assert resp.status_code == 201, resp.text
    second_id = resp.json()["id"]
    assert resp.json()["base_model"] == model_id
    # While the new job trains from it, the model cannot be deleted.
    refused = client.delete(f"/models/{model_id}")
    assert refused.status_code == 409
    assert second_id in refused.json()["detail"]
    second = wait_for_job(client, second_id, {"succeeded", "failed"}, worker=worker)
    assert second["state"] == "succeeded", second["error"]
    assert second["model_id"] != model_id
    assert client.get(f"/models/{second['model_id']}").json()["base_model"] == model_id
    # Once it is done, deleting the first model works and leaves the second one serving.
    assert client.delete(f"/models/{model_id}").status_code == 204
    pred = client.post("/predict", json={"model_id": second["model_id"], "texts": ["superb film"]})
    assert pred.status_code == 200, pred.text
