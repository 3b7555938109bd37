"""OpenAI's error object on every /v1 route: `{"error": {"message", "type", "param", "code"}}`.

The native routes keep `{"detail"}`. A /v1 route raises `OpenAIError` when it knows the
parameter at fault; anything else that ends a /v1 request early (a missing key from the shared
dependencies, a native function the /v1 routes reuse, request validation) is translated here, so
the official client raises its typed exceptions (BadRequestError, NotFoundError, ...) with the
message a user can act on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import validation_error

PREFIX = "/v1"
# OpenAI answers a malformed or invalid parameter with 400; the native API's 422 becomes that.
STATUS = {422: 400}
TYPES = {401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error",
         409: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         503: "server_error"}
CODES = {401: "invalid_api_key", 413: "request_too_large", 429: "rate_limit_exceeded"}


class OpenAIError(HTTPException):
    """A /v1 failure with OpenAI's fields: the parameter at fault and a machine-readable code."""

    def __init__(self, status_code: int, message: str, *, param: str | None = None, code: str | None = None,
                 type_: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code, message, headers=headers)
        self.param, self.code, self.type = param, code, type_


def error_body(status_code: int, message: str, *, param: str | None = None, code: str | None = None,
               type_: str | None = None) -> dict[str, Any]:
    kind = type_ or TYPES.get(status_code, "invalid_request_error" if status_code < 500 else "server_error")
    code = code or CODES.get(status_code)
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _message(detail: Any) -> str:
    return detail if isinstance(detail, str) else str(jsonable_encoder(detail))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if not request.url.path.startswith(PREFIX + "/"):
        return await http_exception_handler(request, exc)
    status = STATUS.get(exc.status_code, exc.status_code)
    body = error_body(status, _message(exc.detail), param=getattr(exc, "param", None),
                      code=getattr(exc, "code", None), type_=getattr(exc, "type", None))
    return JSONResponse(body, status_code=status, headers=getattr(exc, "headers", None))


# pydantic names the member of a union it tried (`literal['auto']`, `int`, `function-after[...]`)
# in the error's location: not a parameter name.
_UNION_MEMBER = re.compile(r"^(literal\[|function-|constrained-|list\[|dict\[|int$|float$|str$|bool$|none$)")


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "form")]
    return ".".join(p for p in parts if not _UNION_MEMBER.match(p))


def _most_telling(errors: list[Any]) -> Any:
    """Of a union's errors, the one about the value's own type (`n_epochs: 0` is "at least 1",
    not "should be 'auto'")."""
    for error in errors:
        if not any(str(p).startswith("literal[") for p in error.get("loc", ())):
            return error
    return errors[0]


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if not request.url.path.startswith(PREFIX + "/"):
        return await validation_error(request, exc)
    first = _most_telling(list(exc.errors()))
    param = _loc(first.get("loc", ())) or None
    if first.get("type") == "extra_forbidden":
        message = (f"Unsupported parameter: '{param}'. tuneserve does not support it; remove it from the "
                   "request.")
        code = "unsupported_parameter"
    else:
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}." if param else str(
            first.get("msg", "invalid request"))
        code = "invalid_value"
    return JSONResponse(error_body(400, message, param=param, code=code), status_code=400)


def _without_422(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI documents a 422 on every route with parameters; a /v1 route answers 400 instead."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        for path, operations in document.get("paths", {}).items():
            if path.startswith(PREFIX + "/"):
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
        return document

    return openapi


def install(app: FastAPI) -> None:
    """Answer /v1 errors in OpenAI's shape (installed after app/errors.py's handlers)."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.openapi = _without_422(app)  # type: ignore[method-assign]
