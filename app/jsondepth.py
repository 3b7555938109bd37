"""How deeply a JSON value may nest, in uploads and request bodies alike.

Python's parser recurses once per level and fails with RecursionError near 1000 levels (a
6 KB `[[[...]]]` does it); pandas, pyarrow and pydantic recurse over what it returns as well.
No table cell or request field of this service nests past a handful of levels (a chat turn is
three: records, messages, a turn), so a bound far below the parser's makes every such input a
422 that names the bound, wherever the JSON comes from.
"""

from __future__ import annotations

import json
from typing import Any

MAX_JSON_DEPTH = 64


class JsonTooDeep(ValueError):
    """The JSON value nests past MAX_JSON_DEPTH; `str(error)` names the bound."""

    def __init__(self, where: str) -> None:
        super().__init__(
            f"{where} nests JSON arrays or objects more than {MAX_JSON_DEPTH} levels deep; the limit "
            f"is {MAX_JSON_DEPTH}. Flatten the data: a record, its fields and a list of chat turns "
            "need no more than a few levels"
        )


def too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether `value` (as json.loads returns it) nests past `limit`; iterative, so a value
    that nests deeper than Python's recursion limit is measured, not a RecursionError."""
    stack: list[tuple[Any, int]] = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def loads_bounded(text: str | bytes, where: str) -> Any:
    """json.loads, with nesting past MAX_JSON_DEPTH (or past the parser's own recursion) raised
    as JsonTooDeep naming `where`; a JSONDecodeError passes through for the caller to word."""
    try:
        value = json.loads(text)
    except RecursionError as e:
        raise JsonTooDeep(where) from e
    if too_deep(value):
        raise JsonTooDeep(where)
    return value
