"""Checks that run before (and right after) a file is parsed, so a hostile or broken file is a
422 that says what to fix rather than a parser's crash, a stall or a silently mangled dataset:
binary content, over-long lines, too many columns, over-long cells."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from app.ingest.errors import IngestError

CHUNK_BYTES = 1024 * 1024
# Well-known binary files people rename to .csv by mistake, by their first bytes.
_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
          b"%PDF": "a PDF document", b"PK\x03\x04": "a ZIP archive (an .xlsx workbook is one)",
          b"\xd0\xcf\x11\xe0": "an old Office document (.xls)", b"\x1f\x8b": "a gzip archive"}


@dataclass(frozen=True)
class ReadLimits:
    """Settings (TUNESERVE_MAX_*) that bound what one uploaded file may hold."""

    max_columns: int = 1000
    max_line_bytes: int = 1024 * 1024
    max_cell_chars: int = 100_000


def reject_binary(path: Path, shown_name: str) -> None:
    """A text upload must hold no NUL byte: those come from images, workbooks or UTF-16 text."""
    with path.open("rb") as f:
        head = f.read(8)
        kind = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            kind = "UTF-16 text"
        offset = 0
        f.seek(0)
        while kind is None and (chunk := f.read(CHUNK_BYTES)):
            if (at := chunk.find(b"\x00")) >= 0:
                kind = f"binary data (a NUL byte at byte {offset + at})"
            offset += len(chunk)
    if kind is not None:
        raise IngestError(
            f"'{shown_name}' is {kind}, not a text table: upload CSV, TSV, JSON, JSONL (saved as UTF-8) "
            "or Parquet. From a spreadsheet, use 'Save as CSV UTF-8'"
        )


def check_lines(path: Path, shown_name: str, limits: ReadLimits) -> None:
    """No line of a CSV/TSV/JSONL longer than the limit: one such line is a data error (a missing
    quote swallowing the file) or a cell no model will read, and it costs the parser memory."""
    longest = current = 0
    line_number = worst_line = 1
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            start = 0
            while (end := chunk.find(b"\n", start)) >= 0:
                current += end - start
                if current > longest:
                    longest, worst_line = current, line_number
                current, start = 0, end + 1
                line_number += 1
            current += len(chunk) - start
            if current > longest:
                longest, worst_line = current, line_number
            if longest > limits.max_line_bytes:
                raise IngestError(
                    f"line {worst_line} of '{shown_name}' is longer than {limits.max_line_bytes // 1024} KB "
                    "(TUNESERVE_MAX_LINE_KB): a quote left open swallows the lines after it, or one cell "
                    "holds far more text than a model reads. Fix or remove that line"
                )


def check_columns(count: int, shown_name: str, limits: ReadLimits) -> None:
    if count > limits.max_columns:
        raise IngestError(
            f"'{shown_name}' has {count} columns; the limit is {limits.max_columns} "
            "(TUNESERVE_MAX_DATASET_COLUMNS). Upload only the text and label columns"
        )


def check_cells(frame: pd.DataFrame, shown_name: str, limits: ReadLimits) -> None:
    """No text cell past max_cell_chars (JSON and Parquet have no lines to bound)."""
    for column in frame.columns:
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_datetime64_any_dtype(series):
            continue  # no text in these (str columns are object or pandas' string dtype)
        lengths = series.map(lambda v: len(v) if isinstance(v, str) else 0)
        if len(lengths) and (longest := int(lengths.max())) > limits.max_cell_chars:
            row = int(lengths.to_numpy().argmax()) + 1
            raise IngestError(
                f"row {row} of '{shown_name}', column {str(column)[:80]!r}, holds {longest} characters; the "
                f"limit is {limits.max_cell_chars} per cell (TUNESERVE_MAX_CELL_CHARS). Shorten or remove "
                "that row: training reads only the first max_seq_length tokens anyway"
            )
