"""The stored dataset, as app/ingest writes it and the worker reads it:
`<datasets_dir>/<id>/<split>.parquet`, one file per split present (train always).

Columns: `row` int64 (1-based data row in the uploaded file), `text` string, and `label` int64
(single_label: index into the dataset's labels) or list<int64> (multi_label: indices of the
positive labels), or `messages` list<struct<role, content, weight>> (chat, no `label`; `weight`
int64 is 0 for an assistant turn left out of the loss, 1 or null otherwise). The directory
is renamed into place whole, so a reader never sees half a dataset.

Names only, no pyarrow: the API imports this at start.
"""

from __future__ import annotations

from pathlib import Path

TRAIN = "train"
VALIDATION = "validation"
TEST = "test"
SPLITS = (TRAIN, VALIDATION, TEST)
# What is scored after training: never trained on, and each absent when the upload had none
# (and asked for no validation split).
HELD_OUT_SPLITS = (VALIDATION, TEST)

ROW = "row"
TEXT = "text"
LABEL = "label"
MESSAGES = "messages"
# The fields of one `messages` item.
ROLE = "role"
CONTENT = "content"
WEIGHT = "weight"


def split_path(dataset_dir: Path, split: str) -> Path:
    return dataset_dir / f"{split}.parquet"
