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

    # A checkpoint at each epoch's evaluation (the 600 s timed one never comes in a run this
    # short); succeeded, the job keeps the newest on disk (keep_checkpoints_after_success=1) and
    # the rows of the others. The best is the first evaluation with the highest f1_macro.
    checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()
    assert [(c["step"], c["available"]) for c in checkpoints] == [(5, False), (10, True)]
    best_step = max(metrics["eval"], key=lambda p: p["f1_macro"])["step"]
    assert [c["step"] for c in checkpoints if c["is_best"]] == [best_step]
    assert all(c["metrics"]["f1_macro"] == p["f1_macro"]
               for c, p in zip(checkpoints, metrics["eval"], strict=True))

    kinds = _event_kinds(client, job_id)
    assert kinds[:6] == ["queued", "claimed", "memory_plan", "new_weights", "batch_probe", "started"]
    new_weights = next(e for e in client.get(f"/jobs/{job_id}/events").json() if e["kind"] == "new_weights")
    assert new_weights["message"].startswith("A new classification head: classifier.weight, classifier.bias")
    assert job["memory_plan"]["fits"] and job["memory_plan"]["choice"]["quantization"] == "none"
    assert kinds[-1] == "succeeded" and "model_ready" in kinds and "comparison" in kinds

    model = client.get(f"/models/{job['model_id']}").json()
    assert model["labels"] == ["negative", "positive"] and model["task"] == "single_label"
    texts = ["superb, moving and funny #7", "a waste of two hours #9"]
    pred = client.post("/predict", json={"model_id": job["model_id"], "texts": texts})
    assert pred.status_code == 200, pred.text
    # /predict answers what the registered model's own forward pass says, in its label order.
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from core.settings import get_settings
    from core.store import model_dir

    directory = str(model_dir(get_settings().models_dir, job["model_id"]))
    tuned = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    with torch.no_grad():
        logits = tuned(**AutoTokenizer.from_pretrained(directory)(
            texts, truncation=True, max_length=32, padding=True, return_tensors="pt")).logits
    expected = [model["labels"][i] for i in logits.argmax(dim=-1).tolist()]
    assert [p["label"] for p in pred.json()["predictions"]] == expected
    assert [p["scores"][label] for p, label in zip(pred.json()["predictions"], expected, strict=True)] == \
        pytest.approx(torch.softmax(logits, dim=-1).max(dim=-1).values.tolist(), abs=1e-5)

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
    # Slow steps so the kill lands mid-epoch; a checkpoint every second (not only at the epoch's
    # evaluation); a short lease so a new worker takes over quickly.
    client, start_worker = stack(fault_step_delay_s=0.4, job_lease_s=3, heartbeat_interval_s=0.5,
                                 checkpoint_interval_s=1.0)
    first = start_worker()
    _, job_id = _start(client, tmp_path, tiny_encoder_dir, epochs=3)  # 5 steps an epoch, 15 in all

    def checkpoint_steps() -> list[int]:
        return [c["step"] for c in client.get(f"/jobs/{job_id}/checkpoints").json()]

    # Mid-epoch: a timed checkpoint inside the first epoch, and a step trained past it.
    wait_until(lambda: any(0 < s < 5 for s in checkpoint_steps()), what="a timed checkpoint")
    saved = max(checkpoint_steps())
    wait_until(lambda: max([p["step"] for p in client.get(f"/jobs/{job_id}/metrics").json()["train"]],
                           default=0) > saved, what="a step past it")
    first.kill()
    trained = [p["step"] for p in client.get(f"/jobs/{job_id}/metrics").json()["train"]]
    before_kill = checkpoint_steps()
    latest = max(before_kill)
    assert client.get(f"/jobs/{job_id}").json()["state"] == "running"

    # The second worker writes no timed checkpoints, so the steps it saves are known in advance:
    # one at each epoch's evaluation after the step it resumed from.
    second = start_worker(checkpoint_interval_s=3600)
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, worker=second)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["step"] == job["total_steps"] == 15
    events = client.get(f"/jobs/{job_id}/events").json()
    kinds = [e["kind"] for e in events]
    assert "worker_lost" in kinds and "resumed" in kinds
    resumed_step = next(e for e in events if e["kind"] == "resumed")["data"]["step"]
    # It resumed from the newest checkpoint the killed worker wrote: what was lost is the steps
    # after it, less than one checkpoint interval of work.
    assert resumed_step == latest and 0 < resumed_step < max(trained)
    # The lost steps were trained again, and each step shows once: the killed attempt's points
    # after the checkpoint were replaced, not duplicated.
    metrics = client.get(f"/jobs/{job_id}/metrics").json()
    assert [p["step"] for p in metrics["train"]] == list(range(1, 16))
    assert [p["step"] for p in metrics["eval"]] == [5, 10, 15]
    # The checkpoint rows: the killed attempt's (none was past the step it resumed from), then
    # the evaluations' of the second. Succeeded, only the newest stays on disk, and the best
    # is the first evaluation with the highest f1_macro.
    checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()
    assert [c["step"] for c in checkpoints] == before_kill + [s for s in (5, 10, 15) if s > resumed_step]
    assert [c["step"] for c in checkpoints if c["available"]] == [15]
    best_step = max(metrics["eval"], key=lambda p: p["f1_macro"])["step"]
    assert [c["step"] for c in checkpoints if c["is_best"]] == [best_step]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cancel_stops_at_the_next_step_and_resume_continues_it(stack: Any, tmp_path: Path,
                                                                tiny_encoder_dir: Path) -> None:
    # The heartbeat is slow on purpose: the cancel is read from the job row after every step.
    client, start_worker = stack(embedded_broker=True, fault_step_delay_s=0.3, heartbeat_interval_s=30)
    worker = start_worker()
    _, job_id = _start(client, tmp_path, tiny_encoder_dir, epochs=2)  # 10 steps

    def train_steps() -> list[int]:
        return [p["step"] for p in client.get(f"/jobs/{job_id}/metrics").json()["train"]]

    wait_until(lambda: len(train_steps()) >= 2, what="step 2")
    resp = client.post(f"/jobs/{job_id}/cancel")
    assert resp.status_code == 200 and resp.json()["state"] == "running"
    seen = max(train_steps())  # every step before this one was written before the cancel returned
    job = wait_for_job(client, job_id, {"cancelled", "succeeded", "failed"}, timeout_s=30, worker=worker)
    assert job["state"] == "cancelled" and job["model_id"] is None
    # The next optimizer step after the request at the latest; the row, the metrics, the events
    # and the final checkpoint all say where it stopped.
    stopped = job["step"]
    assert seen <= stopped <= seen + 1
    assert max(train_steps()) == stopped
    events = client.get(f"/jobs/{job_id}/events").json()
    assert [e["data"]["step"] for e in events if e["kind"] == "cancelled"] == [stopped, stopped]
    assert max(c["step"] for c in client.get(f"/jobs/{job_id}/checkpoints").json()) == stopped

    # Resumed on request: it continues from that checkpoint to the end, every step once.
    resp = client.post(f"/jobs/{job_id}/resume")
    assert resp.status_code == 202 and resp.json()["state"] == "queued"
    assert resp.json()["resume_from_step"] == stopped  # what the CLI says it resumes from
    job = wait_for_job(client, job_id, {"cancelled", "succeeded", "failed"}, worker=worker)
    assert job["state"] == "succeeded", job["error"]
    events = client.get(f"/jobs/{job_id}/events").json()
    assert next(e for e in events if e["kind"] == "resumed")["data"]["step"] == stopped
    assert train_steps() == list(range(1, 11)) and job["step"] == 10
    # Finished: its model plus one checkpoint on disk.
    assert [c["step"] for c in client.get(f"/jobs/{job_id}/checkpoints").json() if c["available"]] == [10]


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
