"""Base model vs tuned model, side by side on the job's held-out splits.

The base model gets the dataset's label head freshly initialized (seeded): it was never trained
for these labels, so its figures sit near chance. The report says so; what it shows is how much
the fine-tune added, and which example predictions it changed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from sklearn.metrics import accuracy_score, f1_score

from app import store
from app.db import session_scope
from app.models import Dataset, Job, JobEvent, TunedModel, utcnow
from app.serving.runtime import LoadedModel

log = logging.getLogger("tuneserve.worker.compare")

# Rows compared per split: enough for stable figures, bounded so a huge validation split
# does not hold the worker for long after training.
MAX_ROWS_PER_SPLIT = 2000
BATCH_SIZE = 32
EXAMPLES_SHOWN = 8
BASE_HEAD_NOTE = (
    "The base model's classification head is newly initialized (it never saw these labels), so its "
    "figures are near chance: the difference is what fine-tuning added."
)
BASE_TUNED_NOTE = "The base is a tuned model with these labels: its own head is compared as it is."


def compare_job(job_id: str, model_id: str | None = None) -> dict[str, Any]:
    """Compare the job's base model with its tuned model (`model_id`, default: the job's)."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        model_id = model_id or (job.model_id if job else None)
        if job is None or not model_id:
            raise ValueError(f"job {job_id} has no tuned model to compare")
        tuned = session.get(TunedModel, model_id)
        dataset = session.get(Dataset, job.dataset_id)
        if tuned is None or dataset is None:
            raise ValueError(f"job {job_id}: its model or dataset was deleted")
        base_path = _base_path(session, job)
        tuned_path, labels, task = Path(tuned.path), list(tuned.labels), tuned.task
        thresholds = tuned.thresholds or {}
        max_len = tuned.max_seq_length or 128
        dataset_dir, seed = Path(dataset.storage_path), int(job.hyperparameters.get("seed", 42))

    report: dict[str, Any] = {"base_model": job.base_model, "model_id": model_id, "splits": {}}
    multi = task == "multi_label"
    tuned_model = _load(tuned_path, labels, task, max_len, seed, fresh_head=False)
    # A tuned model as base (continued fine-tuning) keeps its own head when it has these labels.
    base_is_tuned = Path(base_path).resolve() == tuned_path.resolve() or _has_head_for(base_path, labels)
    base_model = _load(base_path, labels, task, max_len, seed, fresh_head=not base_is_tuned)
    report["note"] = BASE_TUNED_NOTE if base_is_tuned else BASE_HEAD_NOTE
    tuned_cut = np.array([float(thresholds.get(name, 0.5)) for name in labels])
    for split in ("validation", "test"):
        path = dataset_dir / f"{split}.parquet"
        if not path.is_file():
            continue
        table = pq.read_table(path).slice(0, MAX_ROWS_PER_SPLIT).to_pylist()
        texts = [r["text"] for r in table]
        truth = _truth([r["label"] for r in table], len(labels), multi)
        base_pred = _decide(_scores(base_model, texts), multi, np.full(len(labels), 0.5))
        tuned_pred = _decide(_scores(tuned_model, texts), multi, tuned_cut)
        base_figures = _figures(truth, base_pred, multi)
        tuned_figures = _figures(truth, tuned_pred, multi)
        report["splits"][split] = {
            "rows": len(texts),
            "base": base_figures,
            "tuned": tuned_figures,
            "delta": {k: round(tuned_figures[k] - base_figures[k], 6) for k in tuned_figures},
            "changed_examples": _changed(texts, truth, base_pred, tuned_pred, labels, multi),
        }
    report["created_at"] = utcnow().isoformat()
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.comparison = report
        val = report["splits"].get("validation", {})
        summary = ", ".join(f"{k} {val['base'][k]:.3f} -> {val['tuned'][k]:.3f}"
                            for k in list(val.get("tuned", {}))[:2])
        session.add(JobEvent(job_id=job_id, kind="comparison",
                             message=f"Base vs tuned on validation: {summary}." if summary
                             else "Base vs tuned compared.", data=None))
    return report


def _has_head_for(path: str | Path, labels: list[str]) -> bool:
    """A tuned model directory whose head already predicts exactly these labels."""
    meta = store.read_model_meta(Path(path))
    return bool(meta) and list(meta.get("labels") or []) == labels


def _base_path(session: Any, job: Job) -> str:
    if job.base_model_id:
        base = session.get(TunedModel, job.base_model_id)
        if base is not None:
            return str(base.path)
    return store.resolve_base_model(job.base_model)


def _load(path: str | Path, labels: list[str], task: str, max_len: int, seed: int,
          fresh_head: bool) -> LoadedModel:
    torch.manual_seed(seed)  # the base model's fresh head is the same on every comparison
    return LoadedModel(Path(path), task=task, num_labels=len(labels), max_seq_length=max_len,
                       fresh_head_labels=labels if fresh_head else None)


def _scores(model: LoadedModel, texts: list[str]) -> np.ndarray:
    """Probabilities per label, scored exactly as /predict scores them, in bounded batches."""
    rows: list[list[float]] = []
    for start in range(0, len(texts), BATCH_SIZE):
        rows.extend(model.forward(model.encode(texts[start:start + BATCH_SIZE])))
    return np.asarray(rows, dtype=np.float32).reshape(len(texts), -1)


def _truth(raw: list[Any], num_labels: int, multi: bool) -> np.ndarray:
    if not multi:
        return np.asarray(raw, dtype=np.int64)
    hot = np.zeros((len(raw), num_labels), dtype=np.int64)
    for row, positives in enumerate(raw):
        hot[row, list(positives)] = 1
    return hot


def _decide(scores: np.ndarray, multi: bool, thresholds: np.ndarray) -> np.ndarray:
    return (scores >= thresholds).astype(np.int64) if multi else scores.argmax(axis=1)


def _figures(truth: np.ndarray, pred: np.ndarray, multi: bool) -> dict[str, float]:
    if multi:
        return {"f1_micro": float(f1_score(truth, pred, average="micro", zero_division=0)),
                "f1_macro": float(f1_score(truth, pred, average="macro", zero_division=0)),
                "subset_accuracy": float(accuracy_score(truth, pred))}
    return {"accuracy": float(accuracy_score(truth, pred)),
            "f1_macro": float(f1_score(truth, pred, average="macro", zero_division=0)),
            "f1_weighted": float(f1_score(truth, pred, average="weighted", zero_division=0))}


def _names(row: np.ndarray | np.int64, labels: list[str], multi: bool) -> str | list[str]:
    if multi:
        return [labels[i] for i in np.flatnonzero(row)]
    return labels[int(row)]


def _changed(texts: list[str], truth: np.ndarray, base: np.ndarray, tuned: np.ndarray,
             labels: list[str], multi: bool) -> list[dict[str, Any]]:
    changed = [i for i in range(len(texts)) if not np.array_equal(base[i], tuned[i])]
    # Fixed mistakes first: those are what a reader wants to see.
    changed.sort(key=lambda i: not np.array_equal(tuned[i], truth[i]))
    return [{"text": texts[i][:300], "label": _names(truth[i], labels, multi),
             "base": _names(base[i], labels, multi), "tuned": _names(tuned[i], labels, multi),
             "tuned_correct": bool(np.array_equal(tuned[i], truth[i]))}
            for i in changed[:EXAMPLES_SHOWN]]
