"""GET /metrics, read with prometheus_client's own text-format parser."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.db import session_scope
from core.tables import Dataset, Job, MetricPoint
from tests.serving.helpers import register_model


def _scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(resp.text) for s in family.samples}


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _jobs(states: list[str]) -> None:
    with session_scope() as session:
        ds = Dataset(name="t.csv", task="single_label", format="csv", encoding="utf-8", text_column="text",
                     label_columns=["label"], labels=["a", "b"], num_rows={}, sha256="0" * 64,
                     storage_path="/nowhere")
        session.add(ds)
        session.flush()
        for i, state in enumerate(states):
            job = Job(dataset_id=ds.id, base_model="m", task="single_label", state=state)
            session.add(job)
            session.flush()
            if state == "running":
                session.add(MetricPoint(job_id=job.id, kind="train", step=10, epoch=0.5,
                                        values={"loss": 0.5, "samples_per_second": 100.0 + i}))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_metrics_parse_and_count_what_happened(
    client: Any, settings: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = _scrape(client)
    _jobs(["queued", "queued", "running", "running", "failed"])
    (settings.models_dir / "jobs" / "job_x" / "checkpoints").mkdir(parents=True)
    (settings.models_dir / "jobs" / "job_x" / "checkpoints" / "weights.bin").write_bytes(b"x" * 5000)
    from app.telemetry import StateCollector

    # This test wants the file it just wrote counted, not a figure cached by an earlier scrape.
    monkeypatch.setattr(StateCollector, "DISK_SCAN_INTERVAL_S", 0.0)
    model_id = register_model(settings)
    assert client.get("/jobs").status_code == 200
    assert client.get("/jobs/job_nope").status_code == 404
    for _ in range(2):
        resp = client.post("/predict", json={"model_id": model_id, "texts": ["one", "two", "three"]})
        assert resp.status_code == 200
    after = _scrape(client)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("tuneserve_http_requests_total", route="/jobs", method="GET", status="200") == 1
    assert delta("tuneserve_http_requests_total", route="/jobs/{job_id}", method="GET", status="404") == 1
    assert delta("tuneserve_http_requests_total", route="/predict", method="POST", status="200") == 2
    assert delta("tuneserve_http_request_duration_seconds_count", route="/predict", method="POST") == 2
    assert delta("tuneserve_model_cache_lookups_total", result="miss") >= 1
    assert delta("tuneserve_model_cache_lookups_total", result="hit") >= 1
    assert delta("tuneserve_predict_queue_wait_seconds_count") == 6  # one per text
    assert delta("tuneserve_predict_batch_size_sum") == 6
    assert 1 <= delta("tuneserve_predict_batch_size_count") <= 2
    assert _value(after, "tuneserve_jobs", state="queued") == 2
    assert _value(after, "tuneserve_jobs", state="running") == 2
    assert _value(after, "tuneserve_jobs", state="failed") == 1
    assert _value(after, "tuneserve_jobs", state="succeeded") == 0
    assert _value(after, "tuneserve_queue_depth") == 2
    assert _value(after, "tuneserve_training_samples_per_second") == 100.0 + 2 + 100.0 + 3
    assert _value(after, "tuneserve_job_disk_bytes") == 5000


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_metrics_need_no_key_and_show_no_ids(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, database_url: str,
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import configure

    configure(monkeypatch, tmp_path, database_url, auth="on")
    with TestClient(create_app()) as client:
        assert client.get("/jobs/job_0123").status_code == 401
        text = client.get("/metrics").text
    assert "job_0123" not in text
    assert 'route="/jobs/{job_id}"' in text and 'status="401"' in text
