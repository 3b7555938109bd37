"""A file to score with a tuned model (POST /predict/file): read like an upload, its text column
found as an upload's is, and, when it has one, its label column, so the predictions can be
scored against it. Unlike an upload no row is dropped: every row of the file comes back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.ingest import cells
from app.ingest.errors import IngestError
from app.ingest.guards import ReadLimits
from app.ingest.infer import LABEL_NAMES, Inference, Plan, _infer_text
from app.ingest.reader import Table, read_table


@dataclass
class ScoringFile:
    table: Table
    text_column: str
    texts: list[str | None]  # None: the row's text cell is empty (no prediction for it)
    label_columns: list[str] = field(default_factory=list)  # empty: the file has no labels
    # Per row, the true label names (one for single_label), or None when the row has none.
    truth: list[list[str] | None] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def read_scoring_file(path: Path, shown_name: str, *, task: str, labels: list[str],
                      text_column: str | None = None, label_column: str | None = None,
                      limits: ReadLimits | None = None) -> ScoringFile:
    """Read `path` and find its text (and label) columns for a model of `task` over `labels`;
    IngestError (the upload path's messages) when the file or a named column is wrong."""
    table = read_table(path, shown_name, limits)
    inf = Inference(table.frame)
    if text_column:
        inf.require(text_column, "text_column")
    named = [c.strip() for c in (label_column or "").split(",") if c.strip()]
    for column in named:
        inf.require(column, "label_column")
    plan = Plan(task, None)
    # A model's own label names as columns (one 0/1 column per label) are labels, not text.
    label_like = set(named) | set(inf.by_name(LABEL_NAMES)) | {c for c in inf.columns if c in labels}
    plan.text_column = text_column or _infer_text(inf, plan, exclude=label_like - {text_column})
    if text_column:
        plan.reasons["text_column"] = "named by the request"
    columns = named or _find_labels(inf, plan.text_column, task, labels)
    scoring = ScoringFile(table, plan.text_column, [cells.as_text(v) for v in table.frame[plan.text_column]],
                          label_columns=columns, reasons=plan.reasons,
                          warnings=table.warnings + plan.warnings)
    if columns:
        scoring.truth = _truth(table, columns, task, labels)
        scoring.reasons["label_columns"] = ("named by the request" if named
                                            else f"column(s) {', '.join(map(repr, columns))} hold the labels")
    return scoring


def _find_labels(inf: Inference, text_column: str, task: str, labels: list[str]) -> list[str]:
    """A column with a label's usual name, or (multi-label) one 0/1 column per model label."""
    if task == "multi_label" and all(label in inf.columns for label in labels):
        return list(labels)
    named = [c for c in inf.by_name(LABEL_NAMES, exclude={text_column}) if inf.profile(c).non_empty]
    return named[:1]


def _truth(table: Table, columns: list[str], task: str, labels: list[str]) -> list[list[str] | None]:
    frame = table.frame
    if len(columns) > 1 or (task == "multi_label" and columns == list(labels)):
        if task != "multi_label":
            raise IngestError(
                f"{len(columns)} label columns were named, but the model is {task}: name one label column"
            )
        flags = [[cells.binary_flag(v) for v in frame[c]] for c in columns]
        return [None if any(f is None for f in row) else [c for c, f in zip(columns, row, strict=True) if f]
                for row in zip(*flags, strict=True)]
    values = frame[columns[0]].tolist()
    if task == "multi_label":
        return [cells.label_tokens(v) for v in values]
    return [[token] if (token := cells.label_token(v)) is not None else None for v in values]
