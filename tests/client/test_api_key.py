"""The client sends its API key (option or TUNESERVE_API_KEY) as `Authorization: Bearer`, and a
refusal shows the server's detail; against the in-process app with TUNESERVE_AUTH=on."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import app
from tests.conftest import configure


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_key_goes_in_the_bearer_header(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           database_url: str) -> None:
    from fastapi.testclient import TestClient

    from app.auth import create_key
    from app.main import create_app
    from app.migrate import upgrade_head
    from core.db import session_scope
    from core.settings import get_settings

    configure(monkeypatch, tmp_path, database_url, auth="on")
    upgrade_head(get_settings().database_url)
    with session_scope() as session:
        _, key = create_key(session, name="alice")
    runner = CliRunner()
    with TestClient(create_app()) as http:
        refused = runner.invoke(app, ["jobs", "list"], obj=http)
        assert refused.exit_code == 1, refused.output
        assert "a valid API key is required" in refused.output and "HTTP 401" in refused.output
        by_option = runner.invoke(app, ["--api-key", key, "jobs", "list", "--json"], obj=http)
        assert by_option.exit_code == 0, by_option.output
        assert '"count": 0' in by_option.output
        by_env = runner.invoke(app, ["datasets", "list", "--json"], obj=http, env={"TUNESERVE_API_KEY": key})
        assert by_env.exit_code == 0, by_env.output
        wrong = runner.invoke(app, ["jobs", "list"], obj=http, env={"TUNESERVE_API_KEY": key + "x"})
        assert wrong.exit_code == 1 and "HTTP 401" in wrong.output
