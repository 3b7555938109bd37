"""The 422 of request validation, made safe to send: FastAPI echoes each bad value back as
`input`, and a NaN, an Infinity or a lone surrogate there would make the error response itself
fail to encode (a 500 in place of the 422)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

# An echoed value longer than this is cut: a 10 MB field need not come back in its 422.
MAX_ECHO_CHARS = 200


def _safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        text = value if len(value) <= MAX_ECHO_CHARS else value[:MAX_ECHO_CHARS] + "..."
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_safe(k): _safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_safe(v) for v in value]
    return value


async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(status_code=422, content={"detail": _safe(jsonable_encoder(exc.errors()))})


def _errors_as_json(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI documents a route's declared error bodies in the route's own media type; an
    event-stream or tar.gz route answers its errors in JSON all the same, so say that."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        for path in document.get("paths", {}).values():
            for operation in path.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if status[0] in "45" and content and "application/json" not in content:
                        response["content"] = {"application/json": next(iter(content.values()))}
        return document

    return openapi


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.openapi = _errors_as_json(app)  # type: ignore[method-assign]
