"""Request-body limits. JSON routes: a body past TUNESERVE_MAX_REQUEST_BODY_MB is answered 413
before any route parses it, and a JSON body nested past MAX_JSON_DEPTH a 422 naming it. File
uploads (/datasets, /predict/file) have their own, larger limit, TUNESERVE_MAX_UPLOAD_MB,
enforced while they stream by `UploadLimitRoute`."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.jsondepth import JsonTooDeep, loads_bounded
from core.settings import Settings, get_settings

# Streamed and limited by their own route class, at max_upload_mb.
EXEMPT_PREFIXES = ("/datasets", "/predict/file")
# Multipart boundaries and the small form fields ride on top of the files' bytes.
FORM_OVERHEAD_BYTES = 1024 * 1024


def upload_too_large(settings: Settings) -> str:
    return (
        f"the upload is larger than the limit of {settings.max_upload_mb} MB (all files of one request "
        "together): upload a smaller file (a sample, or split it) or raise TUNESERVE_MAX_UPLOAD_MB"
    )


class UploadLimitRoute(APIRoute):
    """Counts body bytes as they arrive, so an oversized upload is refused while it streams (413)
    rather than after the multipart parser has spooled all of it to disk."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def limited(request: Request) -> Response:
            if request.method != "POST":
                return await handler(request)
            settings = get_settings()
            limit = settings.max_upload_bytes + FORM_OVERHEAD_BYTES
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise HTTPException(413, upload_too_large(settings))
            received = 0

            async def counting_receive() -> Message:
                nonlocal received
                message = await request.receive()
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, upload_too_large(settings))
                return message

            return await handler(Request(request.scope, counting_receive))

        return limited


class RequestBodyLimit:
    """Pure ASGI, so it sees the bytes as they arrive: the Content-Length a client declares and
    the bytes it really sends (a chunked body has no Content-Length) are both held to the limit."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE") \
                or scope["path"].startswith(EXEMPT_PREFIXES):
            await self.app(scope, receive, send)
            return
        limit_mb = get_settings().max_request_body_mb
        limit = limit_mb * 1024 * 1024
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit_mb)
            return
        # The route reads the whole body before it runs anyway; reading it here first lets an
        # oversized body be refused with a response rather than a dropped connection.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(send, limit_mb)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if _nests_too_deep(scope, body):
            await _answer(send, 422, str(JsonTooDeep("the request body")))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _nests_too_deep(scope: Scope, body: bytes) -> bool:
    """A JSON body the route's parser would recurse on past its limit: FastAPI would answer a
    bare 400 for the RecursionError, and pydantic recurse again below MAX_JSON_DEPTH."""
    content_type = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
    # FastAPI reads a body with no content type as JSON too.
    if not body or not (content_type in (b"", b"application/json") or content_type.endswith(b"+json")):
        return False
    try:
        loads_bounded(body, "the request body")
    except JsonTooDeep:
        return True
    except ValueError:  # not JSON (or not UTF-8): the route's own 422 says so
        return False
    return False


async def _too_large(send: Send, limit_mb: int) -> None:
    detail = (f"the request body is larger than {limit_mb} MB (TUNESERVE_MAX_REQUEST_BODY_MB); send less "
              "per request (for /predict: fewer texts per request)")
    await _answer(send, 413, detail)


async def _answer(send: Send, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
