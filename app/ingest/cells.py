"""Turning one cell (a CSV string, a JSON value or a Parquet value) into what we need."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from app.jsondepth import JsonTooDeep, loads_bounded

_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f"}
# Chat dialects: OpenAI-style role/content and ShareGPT-style from/value.
_ROLE_ALIASES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant",
                 "gpt": "assistant", "bot": "assistant", "model": "assistant"}


def is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def as_text(value: Any) -> str | None:
    """The cell as trimmed text, or None when it is empty."""
    if is_missing(value):
        return None
    text = value if isinstance(value, str) else str(value)
    return text.strip() or None


# Spellings of "not a number" that pandas, numpy and spreadsheets write for an empty cell. A
# label "None" stays a label (CSV cells are read with no NA guessing), but NaN is never a class.
_NAN_SPELLINGS = {"nan", "-nan", "<na>"}


def label_token(value: Any) -> str | None:
    """A label as its trimmed name: 2, 2.0 and "2   " are all "2"; NaN is no label."""
    if is_missing(value) or (isinstance(value, str) and value.strip().lower() in _NAN_SPELLINGS):
        return None
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip() or None


def is_sequence(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def label_tokens(value: Any) -> list[str] | None:
    """Several labels in one cell: a list, or comma-separated names ("joy, surprise")."""
    if is_sequence(value):
        items = [label_token(v) for v in value]
    elif is_missing(value):
        return None
    else:
        items = [label_token(part) for part in str(value).split(",")]
    tokens = list(dict.fromkeys(t for t in items if t))
    return tokens or None


def binary_flag(value: Any) -> bool | None:
    """A 0/1 cell as a bool; None when it is neither (the caller says which)."""
    token = label_token(value)
    if token is None:
        return None
    lowered = token.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return None


def looks_like_messages(value: Any) -> bool:
    value = _maybe_json(value)
    return is_sequence(value) and len(value) > 0 and all(isinstance(m, dict) for m in value)


# What a row that fits no chat format is told (the formats are detected per file).
CHAT_FORMATS = ("OpenAI (`messages` of {role, content}), ShareGPT (`conversations` of {from, value}) "
                "or Alpaca (`instruction`, optional `input`, `output`)")
NO_CHAT_FORMAT = f"it is in none of the chat formats: {CHAT_FORMATS}"


def chat_dialect(value: Any) -> str:
    """`sharegpt` when the turns are {from, value} objects, else `openai` ({role, content})."""
    value = _maybe_json(value)
    first = value[0] if is_sequence(value) and len(value) and isinstance(value[0], dict) else {}
    return "sharegpt" if "from" in first and "role" not in first else "openai"


def chat_messages(value: Any, column: str = "messages") -> tuple[list[dict[str, Any]] | None, str | None]:
    """(messages, None) for a valid conversation, else (None, why it was rejected). An OpenAI
    assistant turn may carry `weight` 0 (left out of the loss) or 1; it is kept on the turn."""
    if is_missing(value) or (is_sequence(value) and len(value) == 0):
        return None, f"no {column!r} in this row: {NO_CHAT_FORMAT}"
    value = _maybe_json(value)
    if not is_sequence(value):
        return None, f"{column} is not a list of {{role, content}} objects: {NO_CHAT_FORMAT}"
    messages: list[dict[str, Any]] = []
    for turn in value:
        if not isinstance(turn, dict):
            return None, f"{column} holds something that is not a {{role, content}} object"
        raw_role = str(turn.get("role", turn.get("from", ""))).strip().lower()
        role = _ROLE_ALIASES.get(raw_role)
        if role is None:
            return None, f"message role '{raw_role}' is not system, user or assistant"
        content = as_text(turn.get("content", turn.get("value")))
        if content is None:
            return None, f"the {role} message {len(messages) + 1} is empty"
        message: dict[str, Any] = {"role": role, "content": content}
        weight, problem = _weight(turn, role, len(messages) + 1)
        if problem:
            return None, problem
        if weight is not None:
            message["weight"] = weight
        messages.append(message)
    problem = conversation_problem(messages)
    if problem is None and not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages):
        problem = "every assistant message has weight 0: there is nothing to learn; give one weight 1"
    return (None, problem) if problem else (messages, None)


def _weight(turn: dict[str, Any], role: str, position: int) -> tuple[int | None, str | None]:
    """OpenAI's per-message `weight`: 0 or 1, on assistant messages only."""
    raw = turn.get("weight")
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return None, None
    if role != "assistant":
        return None, f"message {position} ({role}) has a weight: only assistant messages take one"
    if isinstance(raw, bool) or raw not in (0, 1):
        return None, f"the assistant message {position} has weight {raw!r}: a weight is 0 or 1"
    return int(raw), None


def conversation_problem(messages: list[dict[str, Any]]) -> str | None:
    """Why these turns cannot train a chat model, or None: an optional system turn first, then
    user and assistant alternating, starting with the user and ending with the assistant."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if any(m["role"] == "system" for m in turns):
        return "a system message may only come first"
    if not turns or turns[0]["role"] != "user":
        return "the conversation must start with a user turn (after an optional system turn)"
    for i, turn in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if turn["role"] != expected:
            return f"turn {i + 1} is {turn['role']} where {expected} was expected: roles must alternate"
    if turns[-1]["role"] != "assistant":
        return "the last turn must be the assistant's (the answer to learn)"
    return None


def _maybe_json(value: Any) -> Any:
    """Chat turns stored as a JSON string in a CSV cell."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return loads_bounded(value, "a cell")
        except (json.JSONDecodeError, JsonTooDeep):
            return value  # not chat turns: the caller says what it expected
    return value
