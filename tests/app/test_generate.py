"""POST /generate without a worker: a full-weights chat model registered as the worker leaves one
(the tiny random Llama), the limits as settings (422, 429) and the errors that name the problem."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import configure


def _register_chat_model(settings: Any, source: Path, model_id: str = "mdl_chat") -> str:
    from core.db import session_scope
    from core.tables import TunedModel

    path = Path(settings.models_dir) / "models" / model_id
    shutil.copytree(source, path)
    with session_scope() as session:
        session.add(TunedModel(id=model_id, job_id=None, base_model="tiny-llama", task="chat", labels=[],
                               metrics={}, max_seq_length=64, path=str(path)))
    return model_id


@pytest.fixture
def chat_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str, tiny_chat_lm_dir: Path) -> Any:
    from app.main import create_app
    from app.migrate import upgrade_head
    from core.settings import get_settings

    configure(monkeypatch, tmp_path, sqlite_url, generate_max_concurrent="1", generate_max_prompt_tokens="40",
              generate_max_new_tokens="64")
    settings = get_settings()
    upgrade_head(settings.database_url)
    return create_app(), _register_chat_model(settings, tiny_chat_lm_dir)


def _post_all(app: Any, payloads: list[dict[str, Any]]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=120) as ac:
            return list(await asyncio.gather(*(ac.post("/generate", json=p) for p in payloads)))

    return asyncio.run(run())


def test_limits_answer_422_and_429_naming_the_setting(chat_api: Any) -> None:
    app, model_id = chat_api
    user = [{"role": "user", "content": "12시 땡!"}]
    [long_prompt] = _post_all(app, [{"model_id": model_id,
                                      "messages": [{"role": "user", "content": "하루가 또 가네요 " * 30}]}])
    [too_many] = _post_all(app, [{"model_id": model_id, "messages": user, "max_new_tokens": 65}])
    [fine] = _post_all(app, [{"model_id": model_id, "messages": user, "max_new_tokens": 4, "temperature": 0}])
    assert long_prompt.status_code == 422
    assert "TUNESERVE_GENERATE_MAX_PROMPT_TOKENS" in long_prompt.json()["detail"]
    assert too_many.status_code == 422 and "TUNESERVE_GENERATE_MAX_NEW_TOKENS" in too_many.json()["detail"]
    assert fine.status_code == 200, fine.text
    assert fine.json()["usage"]["completion_tokens"] <= 4
    # One generation at a time (the setting is 1): of four at once, the others are told to retry.
    payload = {"model_id": model_id, "messages": user, "max_new_tokens": 48, "temperature": 0}
    burst = _post_all(app, [payload] * 4)
    statuses = sorted(r.status_code for r in burst)
    assert statuses[0] == 200 and 429 in statuses, statuses
    refused = next(r for r in burst if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert "TUNESERVE_GENERATE_MAX_CONCURRENT" in refused.json()["detail"]
    # Every slot came back: a later request is served.
    [after] = _post_all(app, [{"model_id": model_id, "messages": user, "max_new_tokens": 2}])
    assert after.status_code == 200, after.text


def test_conversation_errors_name_the_problem(chat_api: Any) -> None:
    app, model_id = chat_api
    ends_with_answer = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    late_system = [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                   {"role": "user", "content": "c"}]
    responses = _post_all(app, [
        {"model_id": model_id, "messages": ends_with_answer},
        {"model_id": model_id, "messages": late_system},
        {"model_id": "mdl_nope", "messages": [{"role": "user", "content": "a"}]},
    ])
    assert [r.status_code for r in responses] == [422, 422, 404]
    assert "last message must be the user's" in responses[0].json()["detail"]
    assert "system message may only come first" in responses[1].json()["detail"]
