"""The model registry (GET/DELETE /models) on SQLite and PostgreSQL, and export."""

from __future__ import annotations

import io
import os
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import configure
from tests.serving.helpers import KOREAN_LABELS, MULTI_LABELS, register_model


def _add_job(settings, *, base_model_id: str, state: str) -> str:  # type: ignore[no-untyped-def]
    from core.db import session_scope
    from core.tables import Dataset, Job

    with session_scope() as session:
        dataset = Dataset(
            name="d", task="single_label", format="csv", encoding="utf-8", sha256="0" * 64,
            storage_path=str(settings.datasets_dir / "d"),
        )
        session.add(dataset)
        session.flush()
        job = Job(dataset_id=dataset.id, base_model=base_model_id, base_model_id=base_model_id,
                  task="single_label", state=state)
        session.add(job)
        session.flush()
        return job.id


def test_list_and_read_models(client, settings) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/models").json() == {"data": [], "count": 0}
    older = register_model(settings, job_id="job_a", created_at=datetime.now(UTC) - timedelta(hours=1))
    newer = register_model(
        settings, task="multi_label", thresholds={"toxic": 0.3, "insult": 0.6, "threat": 0.5}, job_id="job_b"
    )

    listed = client.get("/models")
    assert listed.status_code == 200
    assert listed.json()["count"] == 2
    assert [m["id"] for m in listed.json()["data"]] == [newer, older]
    assert [m["id"] for m in client.get("/models", params={"limit": 1, "skip": 1}).json()["data"]] == [older]

    resp = client.get(f"/models/{newer}")
    assert resp.status_code == 200
    body = resp.json()
    assert body["job_id"] == "job_b" and body["base_model"] == "tiny-bert"
    assert body["task"] == "multi_label" and body["labels"] == MULTI_LABELS
    assert body["thresholds"] == {"toxic": 0.3, "insult": 0.6, "threat": 0.5}
    assert body["metrics"] == {"f1_macro": 0.5} and body["max_seq_length"] == 128
    assert body["size_bytes"] > 1_000_000
    assert body["created_at"].endswith(("Z", "+00:00"))
    assert "path" not in body  # server paths are not part of the API
    assert client.get(f"/models/{older}").json()["labels"] == KOREAN_LABELS

    missing = client.get("/models/mdl_nope")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "model 'mdl_nope' not found"}


def test_delete_removes_row_files_and_loaded_copy(client, settings) -> None:  # type: ignore[no-untyped-def]
    model_id = register_model(settings)
    assert client.get(f"/models/{model_id}").json()["id"] == model_id
    directory = Path(settings.models_dir) / "models" / model_id
    assert directory.is_dir()
    assert client.post("/predict", json={"model_id": model_id, "texts": ["hi"]}).status_code == 200
    assert model_id in client.app.state.predictor.loaded()

    resp = client.delete(f"/models/{model_id}")
    assert resp.status_code == 204 and resp.content == b""
    assert client.get(f"/models/{model_id}").status_code == 404
    assert not directory.exists()
    assert model_id not in client.app.state.predictor.loaded()
    assert client.post("/predict", json={"model_id": model_id, "texts": ["hi"]}).status_code == 404
    assert client.delete(f"/models/{model_id}").status_code == 404


def test_delete_is_refused_while_a_job_trains_from_the_model(client, settings) -> None:  # type: ignore[no-untyped-def]
    from core.db import session_scope
    from core.tables import Job

    model_id = register_model(settings)
    queued = _add_job(settings, base_model_id=model_id, state="queued")
    running = _add_job(settings, base_model_id=model_id, state="running")
    _add_job(settings, base_model_id=model_id, state="failed")  # finished jobs do not block

    resp = client.delete(f"/models/{model_id}")
    assert resp.status_code == 409
    detail = resp.json()["detail"]
    assert f"{queued} (queued)" in detail and f"{running} (running)" in detail
    assert "cancel them or wait" in detail
    assert client.get(f"/models/{model_id}").status_code == 200

    with session_scope() as session:
        for job_id in (queued, running):
            session.get(Job, job_id).state = "succeeded"  # type: ignore[union-attr]
    assert client.delete(f"/models/{model_id}").status_code == 204


def test_delete_keeps_files_outside_the_store(client, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from core.db import session_scope
    from core.tables import TunedModel

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    with session_scope() as session:
        session.add(
            TunedModel(id="mdl_out", base_model="x", task="single_label", labels=["a"], path=str(outside))
        )
    assert client.delete("/models/mdl_out").status_code == 204
    assert (outside / "keep.txt").read_text() == "mine"


@pytest.fixture
def sqlite_client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from app.main import create_app

    configure(monkeypatch, tmp_path, sqlite_url)
    with TestClient(create_app()) as c:
        yield c


def test_download_is_a_directory_a_plain_pipeline_loads(sqlite_client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import pipeline

    from core.settings import get_settings

    model_id = register_model(get_settings())
    resp = sqlite_client.get(f"/models/{model_id}/download")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/gzip"
    assert resp.headers["content-disposition"] == f'attachment; filename="{model_id}.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz") as archive:
        names = archive.getnames()
        archive.extractall(tmp_path / "out", filter="data")
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tuneserve.json"}
    assert {f"{model_id}/{name}" for name in expected} <= set(names)
    extracted = tmp_path / "out" / model_id

    texts = ["이 영화 정말 좋았어요", "you are a terrible person", "hello"]
    classify = pipeline("text-classification", model=str(extracted), top_k=None)
    served = sqlite_client.post("/predict", json={"model_id": model_id, "texts": texts}).json()["predictions"]
    for text, ours in zip(texts, served, strict=True):
        theirs = classify(text)
        theirs = theirs[0] if isinstance(theirs[0], list) else theirs
        assert {s["label"] for s in theirs} == set(KOREAN_LABELS)  # real names, not LABEL_0
        assert max(theirs, key=lambda s: s["score"])["label"] == ours["label"]
        for s in theirs:
            assert ours["scores"][s["label"]] == pytest.approx(s["score"], abs=1e-5)


def test_download_errors(sqlite_client) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from core.settings import get_settings

    assert sqlite_client.get("/models/mdl_nope/download").status_code == 404
    model_id = register_model(get_settings())
    shutil.rmtree(get_settings().models_dir / "models" / model_id)
    resp = sqlite_client.get(f"/models/{model_id}/download")
    assert resp.status_code == 409
    assert "files of model" in resp.json()["detail"] and "missing" in resp.json()["detail"]


def test_streamed_archive_matches_tarfile_reading_of_every_file(tmp_path: Path) -> None:
    from app.serving.export import Snapshot, iter_targz

    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(3 * 2**20 + 7))  # incompressible, not a multiple of 512
    (src / "sub" / "b.txt").write_text("정상 욕설 성희롱")
    (src / "empty").write_bytes(b"")
    chunks = list(iter_targz(Snapshot(src, "root")))
    assert len(chunks) > 2  # streamed in pieces
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:gz") as archive:
        names = ["root", "root/a.bin", "root/empty", "root/sub", "root/sub/b.txt"]
        assert sorted(archive.getnames()) == names
        for rel in ("a.bin", "sub/b.txt", "empty"):
            member = archive.extractfile(f"root/{rel}")
            assert member is not None and member.read() == (src / rel).read_bytes()
