"""Reading one uploaded file into a DataFrame, the format sniffed from its content.

CSV/TSV cells stay strings (`dtype=str`, no NA guessing: a label "None" is a label); JSON,
JSONL and Parquet keep their types (ints, lists, chat messages) for the later steps.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from app.ingest.encoding import detect_encoding, reported_name
from app.ingest.errors import IngestError
from app.ingest.guards import ReadLimits, check_cells, check_columns, check_lines, reject_binary
from app.jsondepth import JsonTooDeep, loads_bounded

SNIFF_BYTES = 64 * 1024
PARQUET_MAGIC = b"PAR1"
# The delimiters we recognise in a header line, in order of preference.
_DELIMITERS = {"\t": "tsv", ",": "csv", ";": "csv", "|": "csv"}
_EXTENSION_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json",
                      ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_FIX_JSON = 'upload an array of objects ([{"text": ..., "label": ...}]) or one object per line (JSONL)'


@dataclass
class Table:
    frame: pd.DataFrame
    format: str
    encoding: str
    warnings: list[str] = field(default_factory=list)


def read_table(path: Path, shown_name: str, limits: ReadLimits | None = None) -> Table:
    """Parse `path` (named `shown_name` by the user) or raise IngestError saying how to fix it."""
    limits = limits or ReadLimits()
    if path.stat().st_size == 0:
        raise IngestError(f"'{shown_name}' is empty: upload a file with a header row and data rows")
    with path.open("rb") as f:
        magic = f.read(len(PARQUET_MAGIC))
    warnings: list[str] = []
    if magic == PARQUET_MAGIC:
        table = Table(_read_parquet(path, shown_name, limits), "parquet", "utf-8")  # Parquet text is UTF-8
    else:
        reject_binary(path, shown_name)
        encoding, note = detect_encoding(path, shown_name)
        if note:
            warnings.append(note)
        fmt, delimiter = _sniff_text_format(path, encoding, shown_name)
        if fmt != "json":  # a JSON array may well sit on one line; its cells are bounded below
            check_lines(path, shown_name, limits)
        if fmt == "json":
            frame = _read_json_array(path, encoding, shown_name)
        elif fmt == "jsonl":
            frame = _read_jsonl(path, encoding, shown_name)
        else:
            _check_header(path, encoding, delimiter, shown_name, limits)
            frame = _read_delimited(path, encoding, delimiter, shown_name)
        table = Table(frame, fmt, reported_name(encoding), warnings)
    check_columns(len(table.frame.columns), shown_name, limits)
    table.frame = _checked(table.frame, shown_name)
    check_cells(table.frame, shown_name, limits)
    expected = _EXTENSION_FORMATS.get(Path(shown_name).suffix.lower())
    if expected and expected != table.format:
        table.warnings.append(
            f"'{shown_name}' is named like {expected} but its content is {table.format}; "
            f"read as {table.format}"
        )
    return table


def _sniff_text_format(path: Path, encoding: str, shown_name: str) -> tuple[str, str]:
    with path.open("r", encoding=encoding, errors="ignore") as f:
        head = f.read(SNIFF_BYTES).lstrip("\ufeff \t\r\n")
    if not head:
        raise IngestError(f"'{shown_name}' holds only blank space: upload a file with a header and data rows")
    if head[0] == "[":
        return "json", ""
    if head[0] == "{":
        return "jsonl", ""
    _reject_json_scalar(head, shown_name)
    header = head.splitlines()[0]
    for delimiter, fmt in _DELIMITERS.items():
        if delimiter in header:
            return fmt, delimiter
    # One column only: still CSV; inference will say what is missing.
    return "csv", ","


# What json.loads returns for a file that is one JSON value but no array or object.
_JSON_SCALARS = {str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _reject_json_scalar(head: str, shown_name: str) -> None:
    """A whole file that is one JSON number, string, boolean or null: say so, rather than read
    it as a one-cell CSV and advise a header row. Only a file that fits the sniffed head can be
    one; a CSV whose first cell is a number or a quoted name does not parse as a single value."""
    if len(head) >= SNIFF_BYTES:
        return
    try:
        value = json.loads(head)
    except (json.JSONDecodeError, RecursionError):
        return
    kind = _JSON_SCALARS.get(type(value))
    if kind is not None:
        raise IngestError(f"'{shown_name}' is a single JSON {kind}, not a table: {_FIX_JSON}")


def _check_header(path: Path, encoding: str, delimiter: str, shown_name: str, limits: ReadLimits) -> None:
    """Columns counted on the header line, before pandas builds a frame of 10^5 columns; and
    the first record held to the header's field count, since pandas reads a first row with one
    field more as a row index (shifting every column) and reports some later symptom instead."""
    with path.open("r", encoding=encoding, errors="replace", newline="") as f:
        header = f.readline()
        check_columns(header.count(delimiter) + 1, shown_name, limits)
        f.seek(0)
        reader = csv.reader(f, delimiter=delimiter)
        try:
            names = next(reader, [])
            first = next(reader, None)
        except csv.Error:
            return  # pandas words the parse error, with its line
    if first is not None and len(first) > len(names):
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise IngestError(
            f"'{shown_name}' is not valid {kind}: line {reader.line_num} has {len(first)} fields but the "
            f"header has {len(names)}. Quote fields that contain the delimiter, and give every row as "
            "many fields as the header"
        )


def _read_delimited(path: Path, encoding: str, delimiter: str, shown_name: str) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False, encoding=encoding)
    except pd.errors.EmptyDataError as e:
        raise IngestError(f"'{shown_name}' has no header row: the first line must name the columns") from e
    except (pd.errors.ParserError, ValueError) as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise IngestError(
            f"'{shown_name}' is not valid {kind}: {str(e).strip()}. Quote fields that contain the "
            f"delimiter or line breaks, and give every row as many fields as the header"
        ) from e
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _read_json_array(path: Path, encoding: str, shown_name: str) -> pd.DataFrame:
    try:
        with path.open("r", encoding=encoding) as f:
            data = loads_bounded(f.read(), f"'{shown_name}'")
    except JsonTooDeep as e:
        raise IngestError(str(e)) from e
    except json.JSONDecodeError as e:
        raise IngestError(
            f"'{shown_name}' is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): {_FIX_JSON}"
        ) from e
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise IngestError(f"'{shown_name}' is JSON but not an array of objects: {_FIX_JSON}")
    return pd.DataFrame.from_records(data)


def _read_jsonl(path: Path, encoding: str, shown_name: str) -> pd.DataFrame:
    records: list[dict[str, Any]] = []
    with path.open("r", encoding=encoding) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = loads_bounded(line, f"line {line_number} of '{shown_name}'")
            except JsonTooDeep as e:
                raise IngestError(str(e)) from e
            except json.JSONDecodeError as e:
                if not records:
                    _reject_single_object(path, encoding, shown_name)
                raise IngestError(
                    f"line {line_number} of '{shown_name}' is not valid JSON ({e.msg}, column {e.colno}): "
                    "fix or remove that line; in JSONL each line is one complete JSON object"
                ) from e
            if not isinstance(record, dict):
                raise IngestError(
                    f"line {line_number} of '{shown_name}' is a JSON {type(record).__name__}, not an "
                    'object: each JSONL line must be one object like {"text": ..., "label": ...}'
                )
            records.append(record)
    if len(records) == 1 and any(isinstance(v, list | dict) for v in records[0].values()):
        _reject_single_object(path, encoding, shown_name)
    return pd.DataFrame.from_records(records)


def _reject_single_object(path: Path, encoding: str, shown_name: str) -> None:
    """One JSON object for the whole file (often {"data": [...]} or columns of lists): say so,
    rather than 'line 1 is not valid JSON' or a dataset of one row."""
    try:
        with path.open("r", encoding=encoding) as f:
            data = loads_bounded(f.read(), f"'{shown_name}'")
    except JsonTooDeep as e:
        raise IngestError(str(e)) from e
    except json.JSONDecodeError:
        return
    if isinstance(data, dict):
        keys = ", ".join(repr(k) for k in list(data)[:5])
        raise IngestError(
            f"'{shown_name}' is a single JSON object (keys {keys}), not records: {_FIX_JSON}. If the "
            "records sit under one of those keys, upload that array on its own"
        )


def _read_parquet(path: Path, shown_name: str, limits: ReadLimits) -> pd.DataFrame:
    try:
        check_columns(len(pq.read_schema(path).names), shown_name, limits)
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise IngestError(
            f"'{shown_name}' starts like Parquet but cannot be read ({e}): write it again with "
            "pandas.DataFrame.to_parquet or pyarrow, or upload CSV/JSONL"
        ) from e
    return table.to_pandas(types_mapper=None)


def _checked(frame: pd.DataFrame, shown_name: str) -> pd.DataFrame:
    if len(frame) == 0:
        raise IngestError(f"'{shown_name}' has no data rows: add rows below the header")
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    return frame
