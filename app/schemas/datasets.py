"""Dataset payloads: what POST /datasets returns and what every dataset read returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RejectedRow(BaseModel):
    row: int = Field(description="1-based data row (header excluded) in the file named by `file`.")
    reason: str
    file: str = Field("file", description="The form field of the file: file, validation_file or test_file.")


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    task: str = Field(description="single_label, multi_label or chat.")
    format: str = Field(description="csv, tsv, json, jsonl or parquet, as read from the content.")
    encoding: str = Field(description="Text encoding of the training file, e.g. utf-8, utf-8-sig, cp949.")
    text_column: str | None
    label_columns: list[str]
    labels: list[str] = Field(description="Ordered label names: the model's id2label.")
    num_rows: dict[str, int] = Field(description="Accepted rows per split.")
    label_distribution: dict[str, dict[str, int]] = Field(description="Per split, label -> rows.")
    rejected_rows: list[RejectedRow] = Field(description="Rows left out and why (the first 1000).")
    warnings: list[str]
    report: dict[str, Any] = Field(
        description="Duplicates, text length percentiles (characters), imbalance ratio, why each "
        "column and the task were chosen, split method, and per-file format and encoding."
    )
    sha256: str
    size_bytes: int
    created_at: datetime


class DatasetDetail(DatasetPublic):
    preview: list[dict[str, Any]] = Field(
        description="The first training rows: row, text and label (multi_label: labels; chat: messages)."
    )


class DatasetsPublic(BaseModel):
    data: list[DatasetPublic]
    count: int
