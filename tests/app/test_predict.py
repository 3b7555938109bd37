"""POST /predict over tiny models registered as the worker leaves them (SQLite)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import configure
from tests.serving.helpers import KOREAN_LABELS, MULTI_LABELS, register_model


@contextmanager
def _api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str, **limits: str) -> Iterator[Any]:
    """(TestClient, settings) over a migrated SQLite database, with serving limits set."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from core.settings import get_settings

    configure(monkeypatch, tmp_path, sqlite_url, **limits)
    with TestClient(create_app()) as c:
        yield c, get_settings()


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str) -> Iterator[Any]:
    with _api(monkeypatch, tmp_path, sqlite_url) as pair:
        yield pair


def test_single_label_scores_every_label_in_order(api) -> None:  # type: ignore[no-untyped-def]
    client, settings = api
    model_id = register_model(settings)
    texts = ["이 영화 정말 좋았어요", "you are awful", "a"]
    resp = client.post("/predict", json={"model_id": model_id, "texts": texts})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_id"] == model_id
    assert len(body["predictions"]) == 3
    for pred in body["predictions"]:
        assert list(pred["scores"]) == KOREAN_LABELS
        assert sum(pred["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert pred["label"] == max(pred["scores"], key=pred["scores"].get)
        assert pred["truncated"] is False
    # The same text alone gets the same answer as inside a batch.
    alone = client.post("/predict", json={"model_id": model_id, "texts": texts[1:2]}).json()
    assert alone["predictions"][0]["scores"] == pytest.approx(body["predictions"][1]["scores"], abs=1e-5)

    top = client.post("/predict", json={"model_id": model_id, "texts": texts[:1], "top_k": 2}).json()
    scores = top["predictions"][0]["scores"]
    assert len(scores) == 2 and list(scores.values()) == sorted(scores.values(), reverse=True)
    assert next(iter(scores)) == body["predictions"][0]["label"]


def test_multi_label_uses_tuned_thresholds_or_the_override(api) -> None:  # type: ignore[no-untyped-def]
    client, settings = api
    model_id = register_model(
        settings, task="multi_label", thresholds={"toxic": 0.0, "insult": 1.0, "threat": 1.0}
    )
    texts = ["first text", "second one"]
    tuned = client.post("/predict", json={"model_id": model_id, "texts": texts})
    assert tuned.status_code == 200, tuned.text
    for pred in tuned.json()["predictions"]:
        assert pred["labels"] == ["toxic"]
        assert list(pred["scores"]) == MULTI_LABELS
        assert all(0 < p < 1 for p in pred["scores"].values())

    everything = client.post("/predict", json={"model_id": model_id, "texts": texts, "threshold": 0.0}).json()
    assert all(p["labels"] == MULTI_LABELS for p in everything["predictions"])
    nothing = client.post("/predict", json={"model_id": model_id, "texts": texts, "threshold": 1.0}).json()
    assert all(p["labels"] == [] for p in nothing["predictions"])


def test_long_texts_are_truncated_and_flagged(api) -> None:  # type: ignore[no-untyped-def]
    client, settings = api
    model_id = register_model(settings, max_seq_length=16)
    resp = client.post("/predict", json={"model_id": model_id, "texts": ["word " * 100, "short"]})
    assert resp.status_code == 200, resp.text
    assert [p["truncated"] for p in resp.json()["predictions"]] == [True, False]


def test_request_errors_name_the_problem(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str
) -> None:
    with _api(monkeypatch, tmp_path, sqlite_url, predict_max_texts="3", predict_max_chars="50") as api:
        _check_request_errors(*api)


def _check_request_errors(client: Any, settings: Any) -> None:
    model_id = register_model(settings)

    def post(**payload: Any) -> Any:
        return client.post("/predict", json={"model_id": model_id, "texts": ["x"]} | payload)

    resp = post(model_id="mdl_nope")
    assert resp.status_code == 404 and resp.json() == {"detail": "model 'mdl_nope' not found"}
    resp = post(texts=[])
    assert resp.status_code == 422 and resp.json() == {"detail": "texts is empty: send between 1 and 3 texts"}
    resp = post(texts=["a"] * 4)
    assert resp.status_code == 422
    assert resp.json()["detail"].startswith("4 texts in one request; the limit is 3")
    resp = post(texts=["ok", "y" * 51])
    assert resp.status_code == 422
    assert resp.json()["detail"].startswith("text 1 has 51 characters; the limit is 50 per text")
    resp = post(threshold=0.5)
    assert resp.status_code == 422 and "threshold applies to multi-label models" in resp.json()["detail"]
    assert post(top_k=0).status_code == 422
    assert post(texts="not a list").status_code == 422

    shutil.rmtree(settings.models_dir / "models" / model_id)
    resp = post()
    assert resp.status_code == 409
    assert resp.json()["detail"].startswith(f"the files of model {model_id} are missing")


def test_full_queue_answers_429_with_retry_after(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str
) -> None:
    from app.main import create_app
    from core.settings import get_settings

    configure(monkeypatch, tmp_path, sqlite_url, predict_max_queue="4", predict_max_wait_ms="20")
    settings = get_settings()
    from app.migrate import upgrade_head

    upgrade_head(settings.database_url)
    model_id = register_model(settings)
    # A fresh app on this test's own event loop (its Predictor is made on first use), and
    # 12 clients at once, each sending 2 texts.
    app = create_app()

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as ac:
            warm = await ac.post("/predict", json={"model_id": model_id, "texts": ["warm"]})
            assert warm.status_code == 200, warm.text
            payload = {"model_id": model_id, "texts": ["a", "b"]}
            try:
                return await asyncio.gather(*(ac.post("/predict", json=payload) for _ in range(12)))
            finally:
                await app.state.predictor.aclose()

    responses = asyncio.run(burst())
    statuses = sorted(r.status_code for r in responses)
    assert 429 in statuses and 200 in statuses, statuses
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert "the prediction queue is full" in r.json()["detail"] and "limit 4" in r.json()["detail"]
        else:
            assert len(r.json()["predictions"]) == 2
