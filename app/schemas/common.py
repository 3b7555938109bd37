"""Types every schema shares, so that nothing a client sends can reach the database or the
tokenizer in a form they fail on (a 500): bounded integers, bounded strings without NUL bytes
or lone surrogates, ids of one shape, and the error body every 4xx carries."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from core.jobspec import NO_NUL_PATTERN, JsonTypes

__all__ = ["NO_NUL_PATTERN", "JsonTypes"]

# Row offsets, event ids and steps: PostgreSQL INTEGER is 32-bit and OFFSET a 64-bit bigint;
# past 2**31 - 1 no row can match anyway, so a larger number is a client error, not a query.
MAX_INT32 = 2**31 - 1
# Ids the service makes look like `job_0123abcd...`; room for ids of later resources too.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
MAX_ID_CHARS = 64


def reject_unstorable(value: str) -> str:
    """NUL bytes (PostgreSQL text cannot hold them) and lone UTF-16 surrogates (not text: they
    cannot be encoded as UTF-8, so the tokenizer and the JSON encoder fail on them)."""
    if "\x00" in value:
        raise ValueError("contains a NUL byte (\\u0000), which text fields cannot hold; remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"contains a lone surrogate ({value[e.start]!r} at character {e.start}), which is not valid "
            "Unicode text; send the text as proper UTF-8"
        ) from e
    return value


CleanStr = Annotated[str, AfterValidator(reject_unstorable),
                     Field(json_schema_extra={"pattern": NO_NUL_PATTERN})]
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]


def id_path(what: str) -> Any:
    return Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN, description=f"The {what}'s id.")


DatasetIdPath = Annotated[str, id_path("dataset")]
JobIdPath = Annotated[str, id_path("job")]
ModelIdPath = Annotated[str, id_path("model")]
IdQuery = Annotated[str | None, Query(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN)]
Offset = Annotated[int, Query(ge=0, le=MAX_INT32, description="Rows to skip.")]
Limit = Annotated[int, Query(ge=1, le=1000, description="Rows to return.")]


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every 4xx and 5xx body. `detail` is a sentence that says what to change; a 422 from
    request validation lists each field instead; /readyz's 503 names each failing dependency."""

    detail: str | list[ValidationIssue] | dict[str, str] = Field(
        description="What went wrong and what to do about it."
    )


ERROR_DESCRIPTIONS = {
    400: "The request cannot be read (for example a malformed body).",
    401: "No valid API key (only when TUNESERVE_AUTH is on).",
    404: "No such object for this API key.",
    409: "The object's state does not allow this now.",
    413: "The request body is larger than the configured limit.",
    422: "A field is invalid; `detail` says which and what to send instead.",
    429: "Too many queued requests or jobs; retry after Retry-After seconds.",
    503: "A dependency (database, broker) is not reachable, or the server is stopping.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route really returns."""
    return {code: {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[code]} for code in codes}
