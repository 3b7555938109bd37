"""What every family's comparison starts from: the job, its tuned model and its dataset, read
once from SQL (a model or dataset deleted since is an error the caller reports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.db import session_scope
from core.tables import Dataset, Job, TunedModel


@dataclass(frozen=True)
class ComparedJob:
    job_id: str
    model_id: str
    base_model: str              # the job's base model as named (hub name, path, bundled name)
    best_metric_name: str | None
    tuned_path: Path
    task: str
    labels: list[str]
    thresholds: dict[str, Any]   # multi-label decision thresholds of the tuned model ({} otherwise)
    max_seq_length: int | None
    dataset_dir: Path


def compared_job(job_id: str, model_id: str | None = None) -> ComparedJob:
    """The job and the tuned model to compare (`model_id`, default: the job's own)."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        model_id = model_id or (job.model_id if job else None)
        if job is None or not model_id:
            raise ValueError(f"job {job_id} has no tuned model to compare")
        tuned = session.get(TunedModel, model_id)
        dataset = session.get(Dataset, job.dataset_id) if job.dataset_id else None
        if tuned is None or dataset is None:
            raise ValueError(f"job {job_id}: its model or dataset was deleted")
        return ComparedJob(
            job_id=job_id, model_id=model_id, base_model=job.base_model,
            best_metric_name=job.best_metric_name,
            tuned_path=Path(tuned.path), task=tuned.task, labels=list(tuned.labels or []),
            thresholds=dict(tuned.thresholds or {}), max_seq_length=tuned.max_seq_length,
            dataset_dir=Path(dataset.storage_path))
