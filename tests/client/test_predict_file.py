"""The row count under `tuneserve predict --file`'s progress bar: CSV records end at newlines
outside quoted fields, whichever way the bytes arrive in chunks; JSONL rows at every newline."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from app.client.predict_file import RowCounter, default_output, format_for

ROWS = [
    {"text": "plain", "label": "pos", "score": 0.9},
    {"text": 'a "quoted" word, and a comma', "label": "neg", "score": 0.8},
    {"text": "two\nlines\r\nand CRLF", "label": "pos", "score": 0.7},
    {"text": '"""', "label": "neg", "score": 0.6},
    {"text": "", "label": "pos", "score": 0.5},
]


def _csv_body() -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ROWS[0]))
    writer.writeheader()
    writer.writerows(ROWS)
    return buffer.getvalue().encode("utf-8")


def _jsonl_body() -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ROWS).encode("utf-8")


def _count(fmt: str, body: bytes, chunk_bytes: int) -> int:
    counter = RowCounter(fmt)
    for start in range(0, len(body), chunk_bytes):
        counter.feed(body[start:start + chunk_bytes])
    return counter.rows


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize(("fmt", "body"), [("csv", _csv_body()), ("jsonl", _jsonl_body())])
def test_every_row_is_counted_once_however_the_body_is_chunked(fmt: str, body: bytes,
                                                               chunk_bytes: int) -> None:
    assert _count(fmt, body, chunk_bytes) == len(ROWS)


def test_a_last_row_without_its_newline_counts_and_a_lone_header_is_no_row() -> None:
    body = _csv_body().rstrip(b"\r\n")
    assert _count("csv", body, 5) == len(ROWS)
    assert _count("csv", b"text,label,score\r\n", 4) == 0
    assert _count("csv", b"", 4) == 0
    assert _count("jsonl", _jsonl_body().rstrip(b"\n"), 3) == len(ROWS)


def test_the_output_name_and_format_follow_the_input_and_the_suffix() -> None:
    assert format_for(Path("out.jsonl"), None) == "jsonl"
    assert format_for(Path("out.CSV"), None) == "csv"
    assert format_for(Path("out.txt"), "jsonl") == "jsonl"
    assert default_output(Path("/data/dev.tsv"), "csv") == Path("dev.predictions.csv")
