"""POST /generate without a worker: a full-weights chat model registered as the worker leaves one
(the tiny random Llama) and two LoRA adapters of it, the limits as settings (422, 429) and the
errors that name the problem; over a real HTTP server (uvicorn), concurrent streamed requests for
both adapters decode in one batch, and a client that disconnects stops its sequence."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
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

    configure(monkeypatch, tmp_path, sqlite_url, generate_max_queued_tokens="100",
              generate_max_prompt_tokens="40", generate_max_new_tokens="64")
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
    # 100 queued tokens (the setting): one request of ~12 prompt + 48 new tokens fits, four at once
    # do not, and the others are told to retry.
    payload = {"model_id": model_id, "messages": user, "max_new_tokens": 48, "temperature": 0}
    burst = _post_all(app, [payload] * 4)
    statuses = sorted(r.status_code for r in burst)
    assert statuses[0] == 200 and 429 in statuses, statuses
    refused = next(r for r in burst if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert "TUNESERVE_GENERATE_MAX_QUEUED_TOKENS" in refused.json()["detail"]
    # Every slot came back: a later request is served.
    [after] = _post_all(app, [{"model_id": model_id, "messages": user, "max_new_tokens": 2}])
    assert after.status_code == 200, after.text


def test_seed_and_stop_per_request(chat_api: Any) -> None:
    app, model_id = chat_api
    user = [{"role": "user", "content": "12시 땡!"}]
    sampled = {"model_id": model_id, "messages": user, "max_new_tokens": 16, "temperature": 1.0, "seed": 11}
    # One at a time: this app's queue holds 100 tokens (one request).
    greedy_payload = {**sampled, "temperature": 0}
    [first], [again], [greedy] = (_post_all(app, [p]) for p in (sampled, sampled, greedy_payload))
    assert first.status_code == again.status_code == greedy.status_code == 200, first.text
    assert first.json()["message"]["content"] == again.json()["message"]["content"]  # the seed decides
    text = greedy.json()["message"]["content"]
    assert len(text) > 3, text
    stop = text[2:4]
    [stopped] = _post_all(app, [{**sampled, "temperature": 0, "stop": [stop]}])
    assert stopped.json()["message"]["content"] == text[:text.index(stop)]
    assert stopped.json()["finish_reason"] == "stop"
    [bad] = _post_all(app, [{**sampled, "stop": [""]}])
    assert bad.status_code == 422  # an empty stop string would end every reply at once


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


# --- over a real HTTP server ---------------------------------------------------------------------
@pytest.fixture
def live_chat(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str, tiny_chat_lm_dir: Path
              ) -> Iterator[tuple[str, Any, list[str]]]:
    """uvicorn serving the app on a free port in this process (so the test can read the engine's
    figures), two LoRA adapters of the tiny Llama registered as chat models."""
    import uvicorn

    from app.main import create_app
    from app.migrate import upgrade_head
    from core.settings import get_settings
    from tests.conftest import make_chat_adapter
    from tests.integration.live_service import free_port

    # A wide wait, so that requests sent together on a loaded machine start in one batch.
    configure(monkeypatch, tmp_path, sqlite_url, generate_max_wait_ms="100")
    settings = get_settings()
    upgrade_head(settings.database_url)
    ids = [_register_chat_model(settings, make_chat_adapter(tiny_chat_lm_dir, tmp_path / f"adapter{i}", i),
                                f"mdl_lora{i}") for i in range(2)]
    app = create_app()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", app, ids
    server.should_exit = True
    thread.join(10)


async def _stream(client: httpx.AsyncClient, payload: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    pieces: list[str] = []
    done: dict[str, Any] = {}
    async with client.stream("POST", "/generate", json={**payload, "stream": True}) as response:
        assert response.status_code == 200, await response.aread()
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                data = json.loads(line.split(":", 1)[1])
                if event == "token":
                    pieces.append(data["text"])
                elif event == "done":
                    done = data
                else:
                    raise AssertionError(data)
    return pieces, done


def test_concurrent_streams_of_two_adapters_share_one_batch(live_chat: tuple[str, Any, list[str]]) -> None:
    url, app, model_ids = live_chat
    prompts = ["12시 땡!", "1지망 학교 떨어졌어", "3박4일 놀러가고 싶다", "가끔 궁금해"]
    payloads = [{"model_id": m, "messages": [{"role": "user", "content": p}], "max_new_tokens": 24,
                 "temperature": 0} for p in prompts for m in model_ids]

    async def run() -> list[tuple[list[str], dict[str, Any]]]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            await _stream(client, payloads[0])  # loads the base and the first adapter
            await _stream(client, payloads[1])
            return list(await asyncio.gather(*(_stream(client, p) for p in payloads)))

    results = asyncio.run(run())
    # Each client got its own reply, token events adding up to the final message...
    for pieces, done in results:
        assert done["message"]["content"] == "".join(pieces)
        assert done["finish_reason"] in {"stop", "length"}
    # ...the reply each adapter gives alone (greedy), though they decoded mixed in one batch.
    from core.serving.engine import GenerationParams, generate_many

    gens = app.state.generations
    engine = gens.engine()
    assert engine.stats.peak_adapters == 2 and engine.stats.peak_rows >= 4, engine.stats
    for i, model_id in enumerate(model_ids):
        runtime = gens.models().runtime(_spec(model_id))
        alone = generate_many(runtime, [[{"role": "user", "content": p}] for p in prompts],
                              GenerationParams(max_new_tokens=24), engine.settings)
        assert [done["message"]["content"] for _, done in results[i::2]] == [r.text for r in alone]


def _spec(model_id: str) -> Any:
    from core.db import session_scope
    from core.serving.generation import read_spec
    from core.tables import TunedModel

    with session_scope() as session:
        row = session.get(TunedModel, model_id)
        assert row is not None
        return read_spec(model_id, Path(row.path))


def test_a_client_that_disconnects_stops_its_sequence(live_chat: tuple[str, Any, list[str]]) -> None:
    url, app, model_ids = live_chat
    payload = {"model_id": model_ids[0], "messages": [{"role": "user", "content": "12시 땡!"}],
               "max_new_tokens": 512, "temperature": 1.0, "seed": 1, "stream": True}

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            async with client.stream("POST", "/generate", json=payload) as response:
                assert response.status_code == 200
                tokens = 0
                async for line in response.aiter_lines():
                    tokens += line.startswith("event: token")
                    if tokens == 2:
                        break  # leaving the block closes the connection

    asyncio.run(run())
    engine = app.state.generations.engine()
    deadline = time.monotonic() + 30
    while not engine.stats.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    [cancelled] = engine.stats.last_cancelled
    assert cancelled.finish_reason == "cancelled"
    assert cancelled.completion_tokens < 512  # stopped, not decoded to its end
    while engine.stats.queued_tokens and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.stats.queued_tokens == 0  # its slot is free again
