"""The OpenAPI document, made to state the limits the routes enforce from settings (FastAPI
builds it from the schemas alone, which cannot know a deployment's TUNESERVE_* values) and the
form field an upload cannot do without. The routes keep their own checks, whose 4xx name the
setting; the document says the same bound, so a client that follows it is never refused."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from core.settings import get_settings


def _component(document: dict[str, Any], path: str, method: str, media_type: str) -> dict[str, Any]:
    """The schema object of an operation's request body, through its $ref."""
    body = document["paths"][path][method]["requestBody"]["content"][media_type]["schema"]
    name = body["$ref"].rsplit("/", 1)[-1]
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def _state_limits(document: dict[str, Any]) -> None:
    settings = get_settings()
    texts = _component(document, "/predict", "post", "application/json")["properties"]["texts"]
    texts |= {"minItems": 1, "maxItems": settings.predict_max_texts}
    texts["items"]["maxLength"] = settings.predict_max_chars
    generate = _component(document, "/generate", "post", "application/json")["properties"]
    for option in generate["max_new_tokens"].get("anyOf", [generate["max_new_tokens"]]):
        if option.get("type") == "integer":
            option["maximum"] = settings.generate_max_new_tokens
    for path, what in (("/datasets", "The training data"), ("/predict/file", "The rows to classify")):
        upload = _component(document, path, "post", "multipart/form-data")
        document["paths"][path]["post"]["requestBody"]["required"] = True
        # The route reads these as optional only to answer their absence in its own words.
        needed = {"file", "model_id"} if path == "/predict/file" else {"file"}
        upload["required"] = sorted({*upload.get("required", []), *needed})
        upload["properties"]["file"] = {"type": "string", "format": "binary",
                                        "description": f"{what}: CSV, TSV, JSON, JSONL or Parquet."}
        # A form field or a header is text or absent, never JSON null: say "string" alone.
        for name, schema in upload["properties"].items():
            upload["properties"][name] = _without_null(schema)
        if path == "/predict/file":
            upload["properties"]["model_id"]["minLength"] = 1  # an empty field is no model id
            upload["properties"]["format"] = {**upload["properties"]["format"], "enum": ["csv", "jsonl"]}
    # /v1/files reads `purpose` as optional only to answer its absence in OpenAI's words.
    files = _component(document, "/v1/files", "post", "multipart/form-data")
    files["required"] = sorted({*files.get("required", []), "purpose", "file"})
    document["paths"]["/v1/files"]["post"]["requestBody"]["required"] = True
    files["properties"]["file"] = {"type": "string", "format": "binary",
                                   "description": "The fine-tune file: JSONL (or CSV, TSV, JSON, Parquet)."}
    files["properties"]["purpose"] = {**_without_null(files["properties"]["purpose"]), "enum": ["fine-tune"]}
    for methods in document["paths"].values():
        for operation in methods.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "header":
                    parameter["schema"] = _without_null(parameter["schema"])


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`anyOf: [{string...}, {null}]` (FastAPI's `str | None`) as the string schema, with the
    keywords that sat beside the anyOf (pattern, description, title) kept."""
    options = [o for o in schema.get("anyOf", []) if o.get("type") != "null"]
    if len(options) != 1 or len(options) == len(schema.get("anyOf", [])):
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**options[0], **rest}


def install_documented_limits(app: FastAPI) -> None:
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        _state_limits(document)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
