"""Generation payloads: POST /generate. Limits from settings (prompt tokens, max_new_tokens,
queued tokens) are checked by the route, so the 4xx names the configured values."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import CleanStr, Id, JsonTypes


class ChatMessage(JsonTypes):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: Annotated[CleanStr, Field(min_length=1)]


class GenerateRequest(JsonTypes):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    model_id: Id
    messages: list[ChatMessage] = Field(
        min_length=1, max_length=1000, description="The conversation so far; the last turn is the user's.")
    max_new_tokens: int | None = Field(
        None, ge=1, le=2**31 - 1,
        description="Most tokens in the reply; default 256 or TUNESERVE_GENERATE_MAX_NEW_TOKENS if lower.")
    temperature: float = Field(0.7, ge=0, le=2, description="0: greedy (deterministic) decoding.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling mass (ignored when greedy).")
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=8,
        description="The reply ends before the first of these strings (finish_reason stop).")
    seed: int | None = Field(
        None, ge=0, le=2**32 - 1,
        description="Sampling seed: the same seed, prompt and settings give the same reply.")
    stream: bool = Field(False, description="Answer Server-Sent Events, one per decoded piece of text.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    message: ChatMessage
    usage: Usage
    finish_reason: Literal["stop", "length"] = Field(
        description="stop: the model ended its turn; length: max_new_tokens was reached.")
