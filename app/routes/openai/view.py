"""tuneserve's own rows as OpenAI's objects: a job as `fine_tuning.job`, its events and metric
points as `fine_tuning.job.event`, its checkpoints as `fine_tuning.job.checkpoint`, a dataset as
a `file`. Reads only: the rows stay what /jobs and the dashboard show."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from app.routes.openai import hyperparameters as auto
from app.schemas.openai import (
    CheckpointMetrics,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    JobError,
    JobHyperparameters,
    MethodOut,
)
from core.jobstate import JobState
from core.tables import Checkpoint, Dataset, Job, JobEvent, MetricPoint

ORGANIZATION = "tuneserve"  # organization_id of jobs made with auth off (one local user)
ERROR_KINDS = ("failed", "comparison_failed")
WARN_KINDS = ("truncated", "rows_skipped", "oom_recovered", "cancel_requested", "pause_requested")


def unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def file_object(dataset: Dataset) -> FileObject:
    return FileObject(id=dataset.id, bytes=dataset.size_bytes, created_at=unix(dataset.created_at) or 0,
                      filename=dataset.name)


def base_name(base_model: str) -> str:
    """The base model as it appears in a tuned model's name: a local directory by its last part."""
    return PurePosixPath(base_model).name if base_model.startswith(("/", ".", "~")) else base_model


def fine_tuned_model_name(job: Job) -> str | None:
    """ft:<base>:<suffix>:<model id> (the suffix empty when none was given), once the job succeeded."""
    if not job.model_id:
        return None
    return f"ft:{base_name(job.base_model)}:{job.suffix or ''}:{job.model_id}"


def checkpoint_model_name(job: Job, step: int) -> str:
    """ft:<base>:<suffix>:<job id>:ckpt-step-N: a checkpoint's name, which a LoRA chat job's
    checkpoint is also served under (/v1/chat/completions)."""
    return f"ft:{base_name(job.base_model)}:{job.suffix or ''}:{job.id}:ckpt-step-{step}"


def status(job: Job) -> str:
    if job.state == JobState.CANCELLED and job.paused:
        return "paused"
    return str(job.state)


def _hyperparameters(job: Job, default_learning_rate: float) -> JobHyperparameters:
    """As resolved when the job was made here (a multiplier "auto" becomes a number once the range
    test chose the rate), else from the native hyperparameters (learning_rate "auto" likewise)."""
    recorded = (job.fine_tuning or {}).get("resolved")
    if recorded:
        return JobHyperparameters(**{**recorded, "learning_rate_multiplier": auto.reported_multiplier(
            recorded["learning_rate_multiplier"], job.chosen_learning_rate, default_learning_rate)})
    hp = job.hyperparameters
    epochs = float(hp.get("epochs", 3))
    rate = hp.get("learning_rate", default_learning_rate)
    multiplier = (auto.reported_multiplier(auto.AUTO, job.chosen_learning_rate, default_learning_rate)
                  if rate == auto.AUTO else float(rate) / default_learning_rate)
    return JobHyperparameters(n_epochs=int(epochs) if epochs.is_integer() else epochs,
                              batch_size=int(hp.get("batch_size", 32)), learning_rate_multiplier=multiplier)


def fine_tuning_job(job: Job, *, default_learning_rate: float,
                    tokens_per_epoch: int | None) -> FineTuningJob:
    hyperparameters = _hyperparameters(job, default_learning_rate)
    error = None
    if job.state == JobState.FAILED:
        error = JobError(code=f"{job.error_kind or 'unknown'}_error", message=job.error or "The job failed.",
                         param=None)
    trained = None
    if job.state == JobState.SUCCEEDED and tokens_per_epoch is not None:
        trained = round(tokens_per_epoch * job.epoch)
    finish = None
    if job.state == JobState.RUNNING and job.eta_s is not None:
        finish = int(time.time() + job.eta_s)
    return FineTuningJob(
        id=job.id, created_at=unix(job.created_at) or 0, finished_at=unix(job.finished_at),
        model=job.base_model, fine_tuned_model=fine_tuned_model_name(job),
        organization_id=job.tenant_id or ORGANIZATION, status=status(job),  # type: ignore[arg-type]
        error=error, hyperparameters=hyperparameters,
        method=MethodOut(supervised={"hyperparameters": hyperparameters}),
        training_file=job.training_file or job.dataset_id or "", validation_file=job.validation_file,
        trained_tokens=trained, estimated_finish=finish, seed=int(job.hyperparameters.get("seed", 42)),
        suffix=job.suffix, user_provided_suffix=job.suffix, metadata=job.job_metadata,
    )


def _level(kind: str) -> str:
    if kind in ERROR_KINDS:
        return "error"
    return "warn" if kind in WARN_KINDS else "info"


def _metric_event(point: MetricPoint, total_steps: int | None) -> FineTuningJobEvent:
    values = point.values
    if point.kind == "train":
        data = {"step": point.step, "total_steps": total_steps, "train_loss": values.get("loss"),
                "train_mean_token_accuracy": values.get("token_accuracy"),
                "learning_rate": values.get("learning_rate")}
        message = (f"Step {point.step}/{total_steps or '?'}: training loss="
                   f"{values.get('loss', float('nan')):.4f}")
    else:
        data = {"step": point.step, "total_steps": total_steps, "valid_loss": values.get("loss"),
                "valid_mean_token_accuracy": values.get("token_accuracy"),
                "full_valid_loss": values.get("loss"),
                "full_valid_mean_token_accuracy": values.get("token_accuracy")}
        message = (f"Step {point.step}/{total_steps or '?'}: validation loss="
                   f"{values.get('loss', float('nan')):.4f}")
    return FineTuningJobEvent(id=f"ftevent-m{point.id}", created_at=unix(point.created_at) or 0, level="info",
                              message=message, type="metrics", data=data)


def job_events(events: Sequence[JobEvent], points: Sequence[MetricPoint],
               total_steps: int | None) -> list[FineTuningJobEvent]:
    """Events and train/eval points together, newest first (OpenAI's order)."""
    keyed: list[tuple[datetime, int, FineTuningJobEvent]] = []
    for event in events:
        keyed.append((event.time, event.id, FineTuningJobEvent(
            id=f"ftevent-e{event.id}", created_at=unix(event.time) or 0, level=_level(event.kind),  # type: ignore[arg-type]
            message=event.message, type="message", data={"kind": event.kind, **(event.data or {})})))
    for point in points:
        if point.kind in ("train", "eval"):
            keyed.append((point.created_at, point.id, _metric_event(point, total_steps)))
    keyed.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [item[2] for item in keyed]


def checkpoint(row: Checkpoint, job: Job) -> FineTuningJobCheckpoint:
    metrics: dict[str, Any] = row.metrics or {}
    name = checkpoint_model_name(job, row.step)
    return FineTuningJobCheckpoint(
        id=row.id, created_at=unix(row.created_at) or 0, fine_tuned_model_checkpoint=name,
        fine_tuning_job_id=job.id, step_number=row.step,
        metrics=CheckpointMetrics(step=row.step, train_loss=metrics.get("train_loss"),
                                  train_mean_token_accuracy=metrics.get("train_token_accuracy"),
                                  valid_loss=metrics.get("loss"),
                                  valid_mean_token_accuracy=metrics.get("token_accuracy"),
                                  full_valid_loss=metrics.get("loss"),
                                  full_valid_mean_token_accuracy=metrics.get("token_accuracy")))


def page(items: list[Any], *, after: str | None, limit: int) -> tuple[list[Any], bool] | None:
    """The `limit` items after the one whose id is `after` (OpenAI's cursor); None when `after`
    names no item."""
    start = 0
    if after is not None:
        ids = [item.id for item in items]
        if after not in ids:
            return None
        start = ids.index(after) + 1
    chunk = items[start:start + limit]
    return chunk, start + limit < len(items)
