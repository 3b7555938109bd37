"""Helpers shared by the dataset tests: upload a file, read what was stored, prove nothing leaked."""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import func, select

from tests.conftest import FIXTURES, SHARED_DATA

HATE_SLICE = FIXTURES / "korean_hate_speech_slice.tsv"
HATE_DEV_SLICE = FIXTURES / "korean_hate_speech_dev_slice.tsv"
CHATBOT_SLICE = FIXTURES / "korean_chatbot_qa_slice.csv"
UNSMILE_COLUMNS = ["여성/가족", "남성", "성소수자", "인종/국적", "연령", "지역", "종교",
                   "기타 혐오", "악플/욕설",
                   "clean", "개인지칭"]


def upload(client: Any, content: bytes | Path, filename: str = "data.csv", *,
           extra_files: dict[str, tuple[str, bytes]] | None = None, **form: Any) -> Any:
    """POST /datasets with `content` as `file` and the other form fields as given."""
    data = content.read_bytes() if isinstance(content, Path) else content
    files = {"file": (filename, data)} | {k: (name, body) for k, (name, body) in (extra_files or {}).items()}
    return client.post("/datasets", files=files, data={k: str(v) for k, v in form.items()})


def csv_bytes(rows: list[list[Any]], *, delimiter: str = ",", encoding: str = "utf-8") -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode(encoding)


def tsv_label_counts(path: Path, label: str, delimiter: str = "\t") -> Counter[str]:
    """Label counts read with the csv module: an independent check on what the API reports."""
    with path.open(encoding="utf-8", newline="") as f:
        return Counter(row[label].strip() for row in csv.DictReader(f, delimiter=delimiter))


def total_distribution(body: dict[str, Any]) -> Counter[str]:
    total: Counter[str] = Counter()
    for counts in body["label_distribution"].values():
        total.update(counts)
    return total


def stored(settings: Any, dataset_id: str, split: str = "train") -> Any:
    return pq.read_table(settings.datasets_dir / dataset_id / f"{split}.parquet")


def dataset_rows(settings: Any) -> int:
    from core.db import new_session
    from core.tables import Dataset

    with new_session(settings.database_url) as session:
        return session.scalar(select(func.count()).select_from(Dataset)) or 0


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*")) if directory.exists() else []


def assert_nothing_left(settings: Any) -> None:
    """No dataset row, nothing in the uploads dir, nothing in the datasets dir."""
    assert dataset_rows(settings) == 0
    assert files_under(settings.uploads_dir) == []
    assert files_under(settings.datasets_dir) == []


def assert_rejected(resp: Any, status: int, phrase: str, settings: Any) -> str:
    assert resp.status_code == status, resp.text
    detail = resp.json()["detail"]
    assert isinstance(detail, str)
    assert phrase in detail, detail
    assert_nothing_left(settings)
    return detail


__all__ = ["SHARED_DATA"]


def dataset_row(task: str = "single_label", labels: list[str] | None = None) -> str:
    """A dataset row as an upload leaves it (no files behind it), for the API tests that need a
    dataset id but never read its data: jobs and experiments are only queued."""
    from core.db import session_scope
    from core.tables import Dataset

    with session_scope() as session:
        row = Dataset(name="t.csv", task=task, format="csv", encoding="utf-8", text_column="text",
                      label_columns=["label"], labels=labels or ["neg", "pos"],
                      num_rows={"train": 10, "validation": 2}, sha256="0" * 64, storage_path="/nowhere")
        session.add(row)
        session.flush()
        return row.id
