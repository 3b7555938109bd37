"""The /generate resource: a chat model's reply, whole or streamed as Server-Sent Events.

Streamed wire format (FastAPI's SSE encoding): `event: token` with JSON `{"text": piece}` as
pieces are decoded, then `event: done` with the same body as a plain reply minus nothing (the
full message, usage, finish_reason); `event: error` with `{"detail"}` if generation fails.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.concurrency import run_in_threadpool

from app.auth import Principal
from app.crud import models as crud
from app.deps import Authenticated, PrincipalDep
from app.schemas.common import errors
from app.schemas.generate import GenerateRequest, GenerateResponse
from app.serving.generations import Generations, generations
from core.db import new_session
from core.settings import Settings

DEFAULT_MAX_NEW_TOKENS = 256
router = APIRouter(prefix="/generate", tags=["generate"], dependencies=[Authenticated],
                   responses=errors(400, 401, 404, 409, 413, 422, 429))


def _chat_model_or_4xx(model_id: str, principal: Principal) -> tuple[str, Path]:
    with new_session() as session:
        model = principal.visible(crud.get_model(session=session, model_id=model_id))
        if model is None:
            raise HTTPException(404, f"model {model_id!r} not found; GET /models lists them")
        if model.task != "chat":
            raise HTTPException(422, f"model {model_id!r} is a {model.task} classifier; /generate serves "
                                     "chat "
                                     "models (POST /predict classifies)")
        return model.id, Path(model.path)


def _check_conversation(request: GenerateRequest, settings: Settings) -> None:
    if request.messages[-1].role != "user":
        raise HTTPException(422, "the last message must be the user's: the reply answers it")
    if any(m.role == "system" for m in request.messages[1:]):
        raise HTTPException(422, "a system message may only come first")
    if request.max_new_tokens is None:
        request.max_new_tokens = min(DEFAULT_MAX_NEW_TOKENS, settings.generate_max_new_tokens)
    if request.max_new_tokens > settings.generate_max_new_tokens:
        raise HTTPException(422, f"max_new_tokens {request.max_new_tokens} is above the limit of "
                                 f"{settings.generate_max_new_tokens} (TUNESERVE_GENERATE_MAX_NEW_TOKENS)")


def _load(gens: Generations, model_id: str, path: Path) -> Any:
    from core.serving.generation import read_spec

    if not path.is_dir():
        raise HTTPException(409, f"the files of model {model_id!r} are missing; it cannot be served")
    return gens.models().runtime(read_spec(model_id, path))


@router.post(
    "",
    response_model=GenerateResponse,
    responses={
        200: {"content": {"text/event-stream": {}},
              "description": "With stream=true: `token` events, then one `done` event."},
    },
)
async def generate(body: GenerateRequest, request: Request, principal: PrincipalDep) -> Any:
    """The assistant's reply to `messages` from a tuned chat model (LoRA adapters share their base)."""
    gens = generations(request)
    settings = gens.settings
    _check_conversation(body, settings)
    model_id, path = await run_in_threadpool(_chat_model_or_4xx, body.model_id, principal)
    if gens.running >= settings.generate_max_concurrent:
        raise HTTPException(429, f"{gens.running} generations are running, the limit is "
                                 f"{settings.generate_max_concurrent} (TUNESERVE_GENERATE_MAX_CONCURRENT); "
                                 "retry shortly", headers={"Retry-After": "2"})
    gens.running += 1  # on the event loop's thread: no lock needed
    released = False
    streaming = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            gens.running -= 1

    try:
        runtime = await run_in_threadpool(_load, gens, model_id, path)
        messages = [m.model_dump() for m in body.messages]
        ids = await run_in_threadpool(runtime.prompt_ids, messages)
        if len(ids) > settings.generate_max_prompt_tokens:
            raise HTTPException(422, f"the conversation is {len(ids)} tokens after the chat template; the "
                                     f"limit is {settings.generate_max_prompt_tokens} "
                                     "(TUNESERVE_GENERATE_MAX_PROMPT_TOKENS): send fewer or shorter turns")
        if body.stream:
            streaming = True  # the stream releases its slot when it ends
            return EventSourceResponse(_stream(runtime, ids, body, model_id, release))
        reply = await run_in_threadpool(runtime.generate, ids, _max_new(body), body.temperature,
                                        body.top_p)
        return _response(model_id, reply.text, reply.prompt_tokens, reply.completion_tokens,
                         reply.finish_reason)
    finally:
        if not streaming:
            release()


def _response(model_id: str, text: str, prompt_tokens: int, completion_tokens: int,
              finish_reason: str) -> dict[str, Any]:
    return {"model_id": model_id, "message": {"role": "assistant", "content": text},
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
            "finish_reason": finish_reason}


async def _stream(runtime: Any, ids: list[int], body: GenerateRequest, model_id: str,
                  release: Any) -> AsyncIterator[bytes]:
    try:
        pieces, thread, result = await run_in_threadpool(runtime.stream, ids, _max_new(body),
                                                         body.temperature, body.top_p)
        text: list[str] = []
        sentinel = object()
        while True:
            piece = await run_in_threadpool(next, pieces, sentinel)
            if not isinstance(piece, str):
                break
            if piece:
                text.append(piece)
                yield format_sse_event(event="token",
                                       data_str=json.dumps({"text": piece}, ensure_ascii=False))
        await asyncio.to_thread(thread.join)
        if "error" in result:
            detail = f"generation failed: {type(result['error']).__name__}: {result['error']}"
            yield format_sse_event(event="error", data_str=json.dumps({"detail": detail}))
            return
        done = _response(model_id, "".join(text), len(ids), result["completion_tokens"],
                         result["finish_reason"])
        yield format_sse_event(event="done", data_str=json.dumps(done, ensure_ascii=False))
    finally:
        release()


def _max_new(body: GenerateRequest) -> int:
    assert body.max_new_tokens is not None  # set by _check_conversation
    return body.max_new_tokens
