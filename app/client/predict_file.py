"""`tuneserve predict MODEL --file in.tsv -o out.csv`: a whole file scored by POST /predict/file,
the answer streamed to the output file under a progress bar.

The server reads the file as uploads are read (CSV, TSV, JSONL, Parquet; the text column
inferred or named) and answers CSV or JSONL: every input column plus the label and the scores.
`X-Tuneserve-Rows`, when the server sends it, is the number of rows to expect; without it the bar
counts rows and bytes with no end. The output appears under its name only once it is whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from app.client.api import Api

FORMATS = ("csv", "jsonl")
ROWS_HEADER = "X-Tuneserve-Rows"


class RowCounter:
    """Counts the rows of a CSV or JSONL body as its bytes arrive, for the progress bar.

    A newline ends a record, except inside a quoted CSV field: every `"` flips quoting, so a
    doubled quote inside a field flips it twice and changes nothing. JSON escapes its newlines,
    so in JSONL every newline ends a row. A CSV's first record is its header."""

    def __init__(self, fmt: str) -> None:
        self.csv = fmt == "csv"
        self.quoted = False
        self.records = 0
        self.open_record = False  # bytes after the last record's end

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if self.csv and (self.quoted or b'"' in chunk):
            for i, part in enumerate(chunk.split(b'"')):
                if i:
                    self.quoted = not self.quoted
                if not self.quoted:
                    self.records += part.count(b"\n")
        else:
            self.records += chunk.count(b"\n")
        self.open_record = self.quoted or not chunk.endswith(b"\n")

    @property
    def rows(self) -> int:
        records = self.records + (1 if self.open_record else 0)
        return max(0, records - 1) if self.csv else records


@dataclass
class Written:
    rows: int
    size_bytes: int
    expected_rows: int | None
    true_label_column: str | None = None   # the file's own label column, when it has one
    predicted_column: str | None = None


def score_written(path: Path, fmt: str, written: Written) -> dict[str, Any] | None:
    """Accuracy, macro F1 and the confusion matrix of the written predictions against the file's
    own labels (scikit-learn), or None when the file had none (or several: multi-label)."""
    if not written.true_label_column or not written.predicted_column:
        return None
    import pandas as pd
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    frame = pd.read_json(path, lines=True) if fmt == "jsonl" else pd.read_csv(path, dtype=str,
                                                                              keep_default_na=False)
    if written.true_label_column not in frame or written.predicted_column not in frame:
        return None
    truth = frame[written.true_label_column].astype(str)
    predicted = frame[written.predicted_column].astype(str)
    scored = (truth != "") & (predicted != "")
    truth, predicted = truth[scored], predicted[scored]
    labels = sorted(set(truth) | set(predicted))
    return {"rows": int(scored.sum()), "accuracy": float(accuracy_score(truth, predicted)),
            "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0)),
            "labels": labels, "confusion_matrix": confusion_matrix(truth, predicted, labels=labels).tolist()}


def format_for(output: Path, fmt: str | None) -> str:
    """--format, else the output's suffix (.jsonl / .ndjson / .json: JSON lines), else CSV."""
    if fmt is not None:
        return fmt
    return "jsonl" if output.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv"


def default_output(source: Path, fmt: str) -> Path:
    """`dev.tsv` -> `dev.predictions.csv` in the current directory."""
    return Path(f"{source.stem}.predictions.{fmt}")


def predict_file(api: Api, model_id: str, source: Path, output: Path, fmt: str, text_column: str | None,
                 console: Console) -> Written:
    """Upload `source`, write the scored rows to `output` (whole or not at all)."""
    data = {"model_id": model_id, "format": fmt} | ({"text_column": text_column} if text_column else {})
    partial = output.with_name(output.name + ".part")
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
                        TextColumn("{task.fields[rows]} rows · {task.fields[received]}"),
                        TimeElapsedColumn(), console=console)
    counter = RowCounter(fmt)
    size_bytes = 0
    try:
        with (source.open("rb") as fh,
              api.stream("POST", "/predict/file", data=data, files={"file": (source.name, fh)}) as resp,
              partial.open("wb") as sink, progress):
            # The bar starts once the server has taken the file (a refusal draws none).
            expected = _expected_rows(resp.headers)
            task = progress.add_task(f"{model_id} ← {source.name}", total=expected, rows=0, received="0 B")
            for chunk in resp.iter_bytes():
                sink.write(chunk)
                counter.feed(chunk)
                size_bytes += len(chunk)
                progress.update(task, completed=counter.rows, rows=counter.rows, received=decimal(size_bytes))
            # A finished bar, also when the server did not say how many rows to expect.
            progress.update(task, total=counter.rows, completed=counter.rows)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    return Written(rows=counter.rows, size_bytes=size_bytes, expected_rows=expected,
                   true_label_column=_header(resp.headers, "X-Tuneserve-True-Label-Column"),
                   predicted_column=_header(resp.headers, "X-Tuneserve-Label-Column"))


def _header(headers: Any, name: str) -> str | None:
    from urllib.parse import unquote

    raw = headers.get(name)
    return unquote(raw) if raw else None


def _expected_rows(headers: Any) -> int | None:
    raw = headers.get(ROWS_HEADER)
    try:
        return int(raw) if raw is not None and int(raw) >= 0 else None
    except ValueError:
        return None
