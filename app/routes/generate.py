"""The /generate resource: a chat model's reply, whole or streamed as Server-Sent Events.

Streamed wire format (FastAPI's SSE encoding): `event: token` with JSON `{"text": piece}` as
pieces are decoded, then `event: done` with the same body as a plain reply minus nothing (the
full message, usage, finish_reason); `event: error` with `{"detail"}` if generation fails.

Every request is decoded by the one generation engine (core/serving/engine.py): concurrent
requests for one base, its LoRA adapters included, share a batch, and a client that disconnects
stops its sequence before the next decoding step. `start_reply()` below (lookup, load, prompt-length
check, queue) is what the OpenAI-compatible chat route calls too.
"""

from __future__ import annotations

import json
import logging
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
log = logging.getLogger("tuneserve.api")
router = APIRouter(prefix="/generate", tags=["generate"], dependencies=[Authenticated],
                   responses=errors(400, 401, 404, 409, 413, 422, 429, 503))


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

    found = gens.models().cached(model_id)
    if found is not None:
        return found
    if not path.is_dir():
        raise HTTPException(409, f"the files of model {model_id!r} are missing; it cannot be served")
    try:
        return gens.models().runtime(read_spec(model_id, path))
    except Exception as error:  # noqa: BLE001 - incomplete files, or a checkpoint rotated away as it loaded
        import torch  # loaded by now: the load above imported it

        if isinstance(error, torch.OutOfMemoryError):
            raise  # not the files' fault
        log.warning("model %s at %s could not be loaded", model_id, path, exc_info=True)
        why = f"{type(error).__name__}: {str(error)[:300]}"
        raise HTTPException(409, f"the files of model {model_id!r} could not be loaded ({why}); "
                                 "it cannot be served") from None


def _params(body: GenerateRequest) -> Any:
    from core.serving.engine import GenerationParams

    assert body.max_new_tokens is not None  # set by _check_conversation
    return GenerationParams(max_new_tokens=body.max_new_tokens, temperature=body.temperature,
                            top_p=body.top_p, stop=tuple(body.stop), seed=body.seed)


async def start_reply(request: Request, principal: Principal, model_id: str,
                      messages: list[dict[str, str]], params: Any) -> Any:
    """The one entry for a chat reply over HTTP (/generate and the OpenAI-compatible chat route):
    the caller's model looked up (404, 422 for a classifier), loaded if needed (409 when its
    files are missing), the prompt's length checked (422) and the reply queued on the engine
    (429 with Retry-After). Returns a core.serving.engine.Stream: `async for piece in stream`,
    then `stream.reply`; `stream.cancel()` when the client goes away. The errors are
    HTTPException with the native `detail`: a route with another error format converts them.
    `params`: core.serving.engine.GenerationParams, within the caller's checked limits."""
    found_id, path = await run_in_threadpool(_chat_model_or_4xx, model_id, principal)
    return await submit(generations(request), found_id, path, messages, params)


async def submit(gens: Generations, model_id: str, path: Path, messages: list[dict[str, str]],
                 params: Any) -> Any:
    """Load the model if needed, check the prompt's length and queue it on the engine: the
    stream of its reply (core.serving.engine.Stream). 409/422/429 as HTTPException."""
    from core.serving.engine import QueueFull

    settings = gens.settings
    runtime, ids = await run_in_threadpool(_load_and_template, gens, model_id, path, messages)
    if len(ids) > settings.generate_max_prompt_tokens:
        raise HTTPException(422, f"the conversation is {len(ids)} tokens after the chat template; the "
                                 f"limit is {settings.generate_max_prompt_tokens} "
                                 "(TUNESERVE_GENERATE_MAX_PROMPT_TOKENS): send fewer or shorter turns")
    try:
        return gens.engine().submit(runtime, ids, params)
    except QueueFull as full:
        raise HTTPException(429, str(full), headers={"Retry-After": str(full.retry_after_s)}) from None


def _load_and_template(gens: Generations, model_id: str, path: Path, messages: list[dict[str, str]]
                       ) -> tuple[Any, list[int]]:
    """One thread hop for both: under load each hop waits for the event loop again."""
    runtime = _load(gens, model_id, path)
    return runtime, runtime.prompt_ids(messages)


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
    _check_conversation(body, generations(request).settings)
    messages = [m.model_dump() for m in body.messages]
    stream = await start_reply(request, principal, body.model_id, messages, _params(body))
    model_id = body.model_id
    if body.stream:
        return EventSourceResponse(_events(stream, model_id))
    from core.serving.engine import GenerationOutOfMemory

    try:
        reply = await stream.text()
    except GenerationOutOfMemory as error:
        raise HTTPException(503, f"{error}; send a shorter conversation or a lower max_new_tokens") from None
    finally:
        stream.cancel()  # the client left before the reply was whole: stop decoding it
    return _response(model_id, reply)


def _response(model_id: str, reply: Any) -> dict[str, Any]:
    return {"model_id": model_id, "message": {"role": "assistant", "content": reply.text},
            "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens},
            "finish_reason": reply.finish_reason}


async def _events(stream: Any, model_id: str) -> AsyncIterator[bytes]:
    """SSE: a `token` event per piece; `done` with the whole reply. A client that disconnects
    closes this generator, which cancels its sequence before the engine's next step."""
    try:
        async for piece in stream:
            yield format_sse_event(event="token", data_str=json.dumps({"text": piece}, ensure_ascii=False))
        yield format_sse_event(event="done", data_str=json.dumps(_response(model_id, stream.reply),
                                                                   ensure_ascii=False))
    except Exception as error:  # noqa: BLE001 - the status line is sent: the stream says what failed
        detail = f"generation failed: {type(error).__name__}: {error}"
        yield format_sse_event(event="error", data_str=json.dumps({"detail": detail}))
    finally:
        stream.cancel()
