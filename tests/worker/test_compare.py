"""Base vs tuned comparison, on a real database, with tiny models on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.db import session_scope
from app.models import Dataset, Job, JobEvent, TunedModel
from app.serving.runtime import LoadedModel
from app.store import write_model_meta
from tests.conftest import make_tiny_classifier

LABELS = ["정상", "욕설", "성희롱"]
TEXTS = ["좋은 하루 되세요", "정말 최악이다 꺼져", "이상한 소리 하지마", "감사합니다 잘 봤어요",
         "너 진짜 바보냐", "오늘 공연 멋졌다", "그만 좀 해라", "행복한 주말"]


def _write_split(directory: Path, name: str, offset: int) -> list[int]:
    labels = [(i + offset) % 3 for i in range(len(TEXTS))]
    table = pa.table({"row": list(range(1, len(TEXTS) + 1)), "text": TEXTS, "label": labels})
    pq.write_table(table, directory / f"{name}.parquet")
    return labels


def _rows(tmp_path: Path, base_model: str, base_model_id: str | None = None) -> tuple[str, str, Path]:
    dataset_dir = tmp_path / "dataset"
    dataset_dir.mkdir()
    _write_split(dataset_dir, "train", 0)
    _write_split(dataset_dir, "validation", 1)
    _write_split(dataset_dir, "test", 2)
    tuned_dir = make_tiny_classifier(tmp_path / "tuned", LABELS, seed=3)
    write_model_meta(tuned_dir, {"task": "single_label", "labels": LABELS, "max_seq_length": 32})
    with session_scope() as session:
        dataset = Dataset(name="d", task="single_label", format="csv", encoding="utf-8", text_column="text",
                          label_columns=["label"], labels=LABELS, sha256="0" * 64,
                          storage_path=str(dataset_dir))
        session.add(dataset)
        session.flush()
        job = Job(dataset_id=dataset.id, base_model=base_model_id or base_model,
                  base_model_id=base_model_id, task="single_label", state="succeeded",
                  hyperparameters={"seed": 42})
        session.add(job)
        session.flush()
        model = TunedModel(job_id=job.id, base_model=job.base_model, task="single_label", labels=LABELS,
                           max_seq_length=32, path=str(tuned_dir))
        session.add(model)
        session.flush()
        return job.id, model.id, tuned_dir


def _expected_accuracy(model_dir: Path, labels: list[int]) -> float:
    loaded = LoadedModel(model_dir, task="single_label", num_labels=3, max_seq_length=32)
    probs = np.asarray(loaded.forward(loaded.encode(TEXTS)))
    return float(np.mean(probs.argmax(axis=1) == np.asarray(labels)))


def test_compare_reports_both_splits_and_stores_them_on_the_job(
    settings: Any, tmp_path: Path, tiny_encoder_dir: Path
) -> None:
    from worker.compare import BASE_HEAD_NOTE, compare_job

    job_id, model_id, tuned_dir = _rows(tmp_path, str(tiny_encoder_dir))
    report = compare_job(job_id, model_id)

    assert set(report["splits"]) == {"validation", "test"}
    assert report["note"] == BASE_HEAD_NOTE
    for split, offset in (("validation", 1), ("test", 2)):
        figures = report["splits"][split]
        assert figures["rows"] == len(TEXTS)
        assert set(figures["base"]) == set(figures["tuned"]) == {"accuracy", "f1_macro", "f1_weighted"}
        for name, delta in figures["delta"].items():
            assert delta == pytest.approx(figures["tuned"][name] - figures["base"][name], abs=1e-6)
        # The tuned side is scored as /predict scores it.
        truth = [(i + offset) % 3 for i in range(len(TEXTS))]
        assert figures["tuned"]["accuracy"] == pytest.approx(_expected_accuracy(tuned_dir, truth))
        for example in figures["changed_examples"]:
            assert example["text"] in TEXTS
            assert {example["label"], example["base"], example["tuned"]} <= set(LABELS)
            assert example["base"] != example["tuned"]
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.comparison == report
        kinds = [e.kind for e in session.query(JobEvent).filter(JobEvent.job_id == job_id)]
    assert kinds == ["comparison"]


def test_a_tuned_base_with_the_same_labels_keeps_its_head(settings: Any, tmp_path: Path) -> None:
    from worker.compare import BASE_TUNED_NOTE, compare_job

    # The job continued from its own tuned model: base and tuned are the same weights.
    job_id, model_id, tuned_dir = _rows(tmp_path, "unused")
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.base_model, job.base_model_id = model_id, model_id
    report = compare_job(job_id, model_id)
    assert report["note"] == BASE_TUNED_NOTE
    for figures in report["splits"].values():
        assert figures["base"] == figures["tuned"]
        assert figures["changed_examples"] == []
        assert all(delta == 0 for delta in figures["delta"].values())
