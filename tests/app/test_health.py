from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import configure


def test_healthz_and_readyz_on_embedded_defaults(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready"}


def test_readyz_names_the_unreachable_broker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str
) -> None:
    # Port 1 on loopback: nothing listens there, so the broker check must fail with a reason.
    configure(monkeypatch, tmp_path, sqlite_url, broker_url="redis://127.0.0.1:1/0")
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as c:
        resp = c.get("/readyz")
    assert resp.status_code == 503
    assert "broker" in resp.json()["detail"]
    assert "database" not in resp.json()["detail"]
