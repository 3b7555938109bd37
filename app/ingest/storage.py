"""The stored dataset: `<datasets_dir>/<id>/{train,validation,test}.parquet`.

Columns (other services read these): `row` int64 (1-based data row in the uploaded file),
`text` string, and `label` int64 (single_label: index into the dataset's labels) or
list<int64> (multi_label: indices of the positive labels), or `messages`
list<struct<role, content>> (chat, no `label`). Written to a hidden sibling directory and
renamed into place, so a reader never sees half a dataset.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from app.ingest.extract import Examples

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])


def split_table(examples: Examples, labels: list[list[int]], task: str) -> pa.Table:
    columns: dict[str, pa.Array] = {
        "row": pa.array(examples.rows, type=pa.int64()),
        "text": pa.array(examples.texts, type=pa.string()),
    }
    if task == "single_label":
        columns["label"] = pa.array([row[0] for row in labels], type=pa.int64())
    elif task == "multi_label":
        columns["label"] = pa.array(labels, type=pa.list_(pa.int64()))
    else:
        columns["messages"] = pa.array(examples.messages, type=pa.list_(MESSAGE_TYPE))
    return pa.table(columns)


def write_dataset(directory: Path, tables: dict[str, pa.Table]) -> None:
    """Write each split as `<split>.parquet` into `directory`, which must not exist yet."""
    partial = directory.with_name(f".{directory.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        for split, table in tables.items():
            pq.write_table(table, partial / f"{split}.parquet")
        os.replace(partial, directory)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def remove_dataset(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def preview(directory: Path, *, rows: int, task: str, labels: list[str]) -> list[dict[str, Any]]:
    """The first `rows` training rows with label names instead of indices."""
    path = directory / "train.parquet"
    if rows <= 0 or not path.is_file():
        return []
    batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows), None)
    if batch is None:
        return []
    out = []
    for record in batch.to_pylist()[:rows]:
        item: dict[str, Any] = {"row": record["row"], "text": record["text"]}
        if task == "single_label":
            item["label"] = labels[record["label"]]
        elif task == "multi_label":
            item["labels"] = [labels[i] for i in record["label"]]
        else:
            item["messages"] = record["messages"]
        out.append(item)
    return out
