"""Writes the stored dataset whose files and columns core/dataset.py names (the worker reads
them from there). Written to a hidden sibling directory and renamed into place, so a reader
never sees half a dataset.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from app.ingest.extract import Examples
from core.dataset import CONTENT, LABEL, MESSAGES, ROLE, ROW, TEXT, TRAIN, WEIGHT, split_path

MESSAGE_TYPE = pa.struct([(ROLE, pa.string()), (CONTENT, pa.string()), (WEIGHT, pa.int64())])


def split_table(examples: Examples, labels: list[list[int]], task: str) -> pa.Table:
    columns: dict[str, pa.Array] = {
        ROW: pa.array(examples.rows, type=pa.int64()),
        TEXT: pa.array(examples.texts, type=pa.string()),
    }
    if task == "single_label":
        columns[LABEL] = pa.array([row[0] for row in labels], type=pa.int64())
    elif task == "multi_label":
        columns[LABEL] = pa.array(labels, type=pa.list_(pa.int64()))
    else:
        columns[MESSAGES] = pa.array(examples.messages, type=pa.list_(MESSAGE_TYPE))
    return pa.table(columns)


def write_dataset(directory: Path, tables: dict[str, pa.Table]) -> None:
    """Write each split's file into `directory`, which must not exist yet."""
    partial = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for split, table in tables.items():
            pq.write_table(table, split_path(partial, split))
        os.replace(partial, directory)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def remove_dataset(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def preview(directory: Path, *, rows: int, task: str, labels: list[str]) -> list[dict[str, Any]]:
    """The first `rows` training rows with label names instead of indices."""
    path = split_path(directory, TRAIN)
    if rows <= 0 or not path.is_file():
        return []
    batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows), None)
    if batch is None:
        return []
    out = []
    for record in batch.to_pylist()[:rows]:
        item: dict[str, Any] = {"row": record[ROW], "text": record[TEXT]}
        if task == "single_label":
            item["label"] = labels[record[LABEL]]
        elif task == "multi_label":
            item["labels"] = [labels[i] for i in record[LABEL]]
        else:
            item["messages"] = record[MESSAGES]
        out.append(item)
    return out
