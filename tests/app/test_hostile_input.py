"""Every 500 a fuzzer found, each now a 4xx whose detail names the field, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from core.db import session_scope
from core.tables import Dataset, Job
from tests.conftest import configure
from tests.serving.helpers import register_model


def _counts() -> tuple[int, int]:
    with session_scope() as session:
        return (session.scalar(select(func.count()).select_from(Dataset)) or 0,
                session.scalar(select(func.count()).select_from(Job)) or 0)


def _dataset() -> str:
    with session_scope() as session:
        row = Dataset(name="t.csv", task="single_label", format="csv", encoding="utf-8", text_column="text",
                      label_columns=["label"], labels=["neg", "pos"], num_rows={"train": 10},
                      sha256="0" * 64, storage_path="/nowhere")
        session.add(row)
        session.flush()
        return row.id


def _detail_names(resp: Any, *words: str) -> None:
    detail = json.dumps(resp.json()["detail"])
    for word in words:
        assert word in detail, (word, detail)


@pytest.mark.parametrize("path", [
    "/jobs?offset=9223372036854775808", "/jobs?offset=2147483648", "/datasets?skip=9223372036854775808",
    "/models?skip=99999999999999999999", "/jobs?limit=100000",
])
def test_out_of_range_offsets_are_422(client: Any, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 422, resp.text
    _detail_names(resp, "less than or equal to")


@pytest.mark.parametrize("path", [
    "/jobs/a%00b", "/datasets/a%00b", "/models/a%00b", "/models/a%00b/download", "/jobs/a%00b/events",
    "/jobs?dataset_id=a%00b", "/jobs/" + "j" * 65, "/jobs/%ED%A0%80",
])
def test_ids_with_nul_bytes_or_past_their_length_are_422(client: Any, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 422, resp.text
    _detail_names(resp, "string")


@pytest.mark.parametrize(("body", "words"), [
    ('{"dataset_id": "DS", "hyperparameters": {"learning_rate": NaN}}', ["learning_rate", "finite"]),
    ('{"dataset_id": "DS", "hyperparameters": {"epochs": Infinity}}', ["epochs", "finite"]),
    ('{"dataset_id": "DS", "hyperparameters": {"warmup_ratio": -Infinity}}', ["warmup_ratio"]),
    ('{"dataset_id": "DS", "hyperparameters": {"seed": 1000000000000000000000000000000}}', ["seed"]),
    ('{"dataset_id": "DS", "hyperparameters": {"max_steps": 9223372036854775808}}', ["max_steps"]),
    ('{"dataset_id": "a\\u0000b"}', ["dataset_id"]),
    ('{"dataset_id": "DS", "base_model": "a\\u0000b"}', ["base_model", "NUL"]),
    ('{"dataset_id": "DS", "base_model": "\\ud800"}', ["base_model", "surrogate"]),
    ('{"dataset_id": "DS", "base_model": "' + "x" * 10_000 + '"}', ["base_model", "1024"]),
])
def test_job_bodies_that_used_to_500_are_422(client: Any, body: str, words: list[str]) -> None:
    resp = client.post("/jobs", content=body.replace("DS", _dataset()),
                       headers={"content-type": "application/json"})
    assert resp.status_code == 422, resp.text
    _detail_names(resp, *words)
    assert _counts()[1] == 0


@pytest.mark.parametrize("base_model", ["/proc/1/root", "/proc/self/root/nonexistent", "/root/.ssh"])
def test_unreadable_local_paths_are_422_not_500(client: Any, base_model: str) -> None:
    resp = client.post("/jobs", json={"dataset_id": _dataset(), "base_model": base_model})
    assert resp.status_code == 422, resp.text
    _detail_names(resp, "base_model")
    assert _counts()[1] == 0


def test_another_jobs_checkpoint_is_not_a_base_model(client: Any, settings: Any) -> None:
    checkpoint = settings.models_dir / "jobs" / "job_x" / "checkpoints" / "step-1"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    resp = client.post("/jobs", json={"dataset_id": _dataset(), "base_model": str(checkpoint)})
    assert resp.status_code == 422
    _detail_names(resp, "inside the service's own storage", "GET /models")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_predict_texts_with_lone_surrogates_or_nul_are_422(client: Any, settings: Any) -> None:
    model_id = register_model(settings)
    for text in ("\\ud800", "ok \\udfff", "a\\u0000b"):
        body = '{"model_id": "MODEL", "texts": ["fine", "TEXT"]}'
        body = body.replace("MODEL", model_id).replace("TEXT", text)
        resp = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 422, resp.text
        _detail_names(resp, "texts", "1")  # the field and the index of the bad text
    assert client.post("/predict", json={"model_id": model_id, "texts": ["fine"]}).status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dataset_form_fields_with_nul_or_bad_seed_are_422(client: Any) -> None:
    csv = b"text,label\n" + b"".join(b"good %d,pos\nbad %d,neg\n" % (i, i) for i in range(10))
    for form, words in [({"name": "a\x00b"}, ["name", "NUL"]), ({"seed": str(10**30)}, ["seed"]),
                        ({"text_column": "x" * 2000}, ["text_column"])]:
        resp = client.post("/datasets", files={"file": ("a.csv", csv)}, data=form)
        assert resp.status_code == 422, (form, resp.text)
        _detail_names(resp, *words)
    assert _counts()[0] == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_body_past_the_limit_is_413_whether_declared_or_streamed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str,
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    configure(monkeypatch, tmp_path, database_url, max_request_body_mb="1")
    big = json.dumps({"model_id": "mdl_x", "texts": ["y" * 1000] * 1100}).encode()
    with TestClient(create_app()) as client:
        resp = client.post("/predict", content=big, headers={"content-type": "application/json"})
        assert resp.status_code == 413
        _detail_names(resp, "1 MB", "TUNESERVE_MAX_REQUEST_BODY_MB")

        def chunks() -> Any:  # no Content-Length: the bytes themselves are counted
            for i in range(0, len(big), 65536):
                yield big[i:i + 65536]

        resp = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        assert resp.status_code == 413
        small = client.post("/predict", json={"model_id": "mdl_x", "texts": ["y"]})
        assert small.status_code == 404  # under the limit the route answers as usual


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_pickled_weights_are_never_loaded(client: Any, settings: Any) -> None:
    """A model directory whose weights are a pickle (pytorch_model.bin) is refused: unpickling
    can run code. The same model as safetensors is served."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model_id = register_model(settings)
    directory = settings.models_dir / "models" / model_id
    assert client.post("/predict", json={"model_id": model_id, "texts": ["x"]}).status_code == 200
    other_id = register_model(settings)
    other = settings.models_dir / "models" / other_id
    model = AutoModelForSequenceClassification.from_pretrained(directory)
    (other / "model.safetensors").unlink()
    torch.save(model.state_dict(), other / "pytorch_model.bin")
    resp = client.post("/predict", json={"model_id": other_id, "texts": ["x"]})
    assert resp.status_code == 409, resp.text
    assert f"model {other_id} could not be loaded" in resp.json()["detail"]
