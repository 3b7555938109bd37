"""/v1/chat/completions: a tuned chat model's reply as OpenAI's `chat.completion`, or streamed as
`chat.completion.chunk` Server-Sent Events ending with `data: [DONE]`. The generation itself is
app/routes/openai/engine.py's, which is POST /generate's path."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.auth import Principal
from app.deps import Authenticated, PrincipalDep
from app.routes.generate import DEFAULT_MAX_NEW_TOKENS
from app.routes.openai import engine
from app.routes.openai.errors import OpenAIError, error_body
from app.routes.openai.models import servable_or_404
from app.schemas.openai import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionCreate,
    Choice,
    CompletionUsage,
    OpenAIErrorOut,
)
from core.db import new_session
from core.settings import Settings

router = APIRouter(prefix="/v1/chat", tags=["openai"], dependencies=[Authenticated],
                   responses={code: {"model": OpenAIErrorOut} for code in (400, 401, 404, 409, 429)})
# OpenAI's defaults where the request leaves them out.
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0


def _messages(body: ChatCompletionCreate) -> list[dict[str, str]]:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages]
    if messages[-1]["role"] != "user":
        raise OpenAIError(400, "The last message must be the user's: the reply answers it.", param="messages")
    if any(m["role"] == "system" for m in messages[1:]):
        raise OpenAIError(400, "A system (or developer) message may only come first.", param="messages")
    if any(not m["content"].strip() for m in messages):
        raise OpenAIError(400, "A message has no text.", param="messages")
    return messages


def _sampling(body: ChatCompletionCreate, settings: Settings) -> Any:
    if body.max_tokens is not None and body.max_completion_tokens is not None and (
            body.max_tokens != body.max_completion_tokens):
        raise OpenAIError(400, "max_tokens and max_completion_tokens disagree; send one of them.",
                          param="max_completion_tokens")
    requested = body.max_completion_tokens or body.max_tokens
    limit = settings.generate_max_new_tokens
    if requested is not None and requested > limit:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise OpenAIError(400, f"{param} {requested} is above the limit of {limit} "
                               "(TUNESERVE_GENERATE_MAX_NEW_TOKENS).", param=param, code="invalid_value")
    return engine.params(
        max_new_tokens=requested or min(DEFAULT_MAX_NEW_TOKENS, limit),
        temperature=DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        top_p=DEFAULT_TOP_P if body.top_p is None else body.top_p, stops=body.stops(), seed=body.seed)


def _model(name: str, principal: Principal) -> Any:
    with new_session() as session:
        found = servable_or_404(session, principal, name, param="model")
        return found.runtime_id, found.path


@router.post("/completions", response_model=ChatCompletion,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "With stream=true: chat.completion.chunk events, then [DONE]."}})
async def create_chat_completion(body: ChatCompletionCreate, request: Request,
                                 principal: PrincipalDep) -> Any:
    """A tuned chat model's reply to `messages` (OpenAI's chat completions)."""
    unsupported = body.unsupported()
    if unsupported:
        raise OpenAIError(400, f"'{unsupported}' is not supported by tuneserve: it serves plain text replies "
                               "(no tools, structured output, log probabilities or penalties); remove it.",
                          param=unsupported, code="unsupported_parameter")
    if body.stream_options is not None and not body.stream:
        raise OpenAIError(400, "stream_options is only allowed with stream=true.", param="stream_options")
    gens = engine.engine(request)
    messages = _messages(body)
    sampling = _sampling(body, gens.settings)
    model_id, path = await run_in_threadpool(_model, body.model, principal)
    streams = await engine.start(gens, model_id, Path(path), messages, sampling, body.n or 1)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_stream(streams, body.model, include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        replies = [await stream.text() for stream in streams]
    finally:
        for stream in streams:  # a client gone mid-request frees the batch's rows
            stream.cancel()
    choices = [Choice(index=index, message=AssistantMessage(content=reply.text),
                      finish_reason=_finish(reply.finish_reason))  # type: ignore[arg-type]
               for index, reply in enumerate(replies)]
    prompt_tokens = replies[0].prompt_tokens
    completion_tokens = sum(reply.completion_tokens for reply in replies)
    usage = CompletionUsage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                            total_tokens=prompt_tokens + completion_tokens)
    return ChatCompletion(id=_completion_id(), created=int(time.time()), model=body.model,
                          choices=choices, usage=usage)


def _finish(reason: str) -> str:
    return "stop" if reason == "cancelled" else reason


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


async def _stream(streams: list[Any], model: str, include_usage: bool) -> AsyncIterator[bytes]:
    completion_id, created = _completion_id(), int(time.time())
    usage_field = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        return _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                     "model": model, "system_fingerprint": None,
                     "choices": [{"index": index, "delta": delta, "logprobs": None,
                                  "finish_reason": finish_reason}], **usage_field})

    prompt_tokens = completion_tokens = 0
    try:
        for index, stream in enumerate(streams):  # the others decode meanwhile, in the same batch
            yield chunk(index, {"role": "assistant", "content": ""}, None)
            try:
                async for piece in stream:
                    if piece:
                        yield chunk(index, {"content": piece}, None)
            except Exception as error:  # noqa: BLE001 - the client gets it in the stream's own shape
                yield _sse(error_body(500, f"generation failed: {type(error).__name__}: {error}"))
                return
            assert stream.reply is not None
            prompt_tokens = stream.reply.prompt_tokens
            completion_tokens += stream.reply.completion_tokens
            yield chunk(index, {}, _finish(stream.reply.finish_reason))
        if include_usage:
            yield _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                        "model": model, "system_fingerprint": None, "choices": [],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                  "total_tokens": prompt_tokens + completion_tokens}})
        yield b"data: [DONE]\n\n"
    finally:
        for stream in streams:  # a client that went away stops its sequences within one step
            stream.cancel()
