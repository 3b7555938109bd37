"""Conversations as training and serving both see them: the same system prompt must reach the
model at serving time as in training, so it is inserted by one function."""

from __future__ import annotations

Message = dict[str, str]


def with_system_prompt(messages: list[Message], system_prompt: str | None) -> list[Message]:
    """The job's system prompt for a conversation that has none of its own."""
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages
