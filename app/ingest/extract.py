"""Rows of one file as examples (row number, text, label names or chat turns), with the rows
that cannot be used and why. Label names become indices later, once the label list is known."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from app.ingest import cells
from app.ingest.errors import IngestError
from app.ingest.infer import Plan


@dataclass
class Examples:
    rows: list[int] = field(default_factory=list)  # 1-based data row in the uploaded file
    texts: list[str] = field(default_factory=list)
    tokens: list[list[str]] = field(default_factory=list)  # label names per row (one for single_label)
    messages: list[list[dict[str, Any]]] = field(default_factory=list)  # chat; `weight` on some turns
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def keep(self, indices: list[int]) -> Examples:
        """Only the examples at these positions (rejections stay with the source)."""
        return Examples(
            rows=[self.rows[i] for i in indices],
            texts=[self.texts[i] for i in indices],
            tokens=[self.tokens[i] for i in indices] if self.tokens else [],
            messages=[self.messages[i] for i in indices] if self.messages else [],
        )


def extract(frame: pd.DataFrame, plan: Plan, shown_name: str) -> Examples:
    """Examples of `frame` per `plan`; the columns must exist (checked here for the extra files)."""
    optional = [c for c in (plan.input_column, plan.system_column) if c and c in frame.columns]
    needed = [c for c in (plan.text_column, plan.answer_column, *plan.label_columns) if c]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        listed = ", ".join(repr(c) for c in frame.columns)
        raise IngestError(
            f"'{shown_name}' lacks column(s) {', '.join(repr(c) for c in missing)} that the training file "
            f"uses; its columns are: {listed}. Give every file the same columns"
        )
    out = Examples()
    for row, record in _records(frame, needed + optional):
        text, tokens, messages, reason = _example(record, plan)
        if reason is not None:
            out.rejected.append((row, reason))
            continue
        out.rows.append(row)
        out.texts.append(text or "")
        if plan.task == "chat":
            out.messages.append(messages or [])
        else:
            out.tokens.append(tokens or [])
    return out


def _records(frame: pd.DataFrame, columns: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    # zip over plain lists: far faster than iterrows on 100k-row files.
    values = [frame[c].tolist() for c in columns]
    for i, row_values in enumerate(zip(*values, strict=True)):
        yield i + 1, dict(zip(columns, row_values, strict=True))


def _example(
    record: dict[str, Any], plan: Plan
) -> tuple[str | None, list[str] | None, list[dict[str, Any]] | None, str | None]:
    """(text, label names, messages, None), or (..., reason) when the row is rejected."""
    system = cells.as_text(record.get(plan.system_column)) if plan.system_column else None
    if plan.messages_column:
        messages, reason = cells.chat_messages(record[plan.messages_column], plan.messages_column)
        if messages is None:
            return None, None, None, reason
        if system and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": system}, *messages]
        first_user = next(m["content"] for m in messages if m["role"] == "user")
        return first_user, None, messages, None
    assert plan.text_column is not None  # every non-messages plan names its text column
    text = cells.as_text(record[plan.text_column])
    if text is None:
        if plan.chat_format == "alpaca":
            reason = f"empty instruction in column {plan.text_column!r}: {cells.NO_CHAT_FORMAT}"
            return None, None, None, reason
        return None, None, None, f"empty text in column {plan.text_column!r}"
    if plan.answer_column:
        answer = cells.as_text(record[plan.answer_column])
        if answer is None:
            return None, None, None, f"empty answer in column {plan.answer_column!r}"
        extra = cells.as_text(record.get(plan.input_column)) if plan.input_column else None
        # Alpaca: the instruction and its input are both the user's turn (LLaMA-Factory joins them so).
        user = f"{text}\n{extra}" if extra else text
        turns = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        if system:
            turns.insert(0, {"role": "system", "content": system})
        return user, None, turns, None
    tokens, reason = _labels(record, plan)
    return text, tokens, None, reason


def _labels(record: dict[str, Any], plan: Plan) -> tuple[list[str] | None, str | None]:
    if plan.label_shape == "binary_columns":
        positive = []
        for column in plan.label_columns:
            flag = cells.binary_flag(record[column])
            if flag is None:
                if cells.is_missing(record[column]):
                    return None, f"missing label: column {column!r} is empty"
                return None, f"column {column!r} has {str(record[column])[:40]!r} where 0 or 1 is expected"
            if flag:
                positive.append(column)
        return positive, None
    column = plan.label_columns[0]
    if plan.label_shape == "multi_cell":
        tokens = cells.label_tokens(record[column])
    else:
        token = cells.label_token(record[column])
        tokens = [token] if token is not None else None
    if tokens is None:
        return None, f"missing label in column {column!r}"
    return tokens, None
