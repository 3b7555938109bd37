"""The SQL schema of the whole product.

Open by design: JSON columns hold per-task figures (classification now, chat later) and
`tenant_id` is present for API keys, so later features add columns, not tables rewritten.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """The one place a stored time gets its zone: every time is written in UTC, and SQLite
    (which has no zone-aware type) hands them back naive."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that is written in UTC and always read back zone-aware, on SQLite as on
    PostgreSQL, so every API response carries the zone (ISO 8601 with +00:00)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        # SQLite stores text: without the zone, string comparisons (heartbeat < cutoff) stay
        # correct because every value is in the same zone.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return as_utc(value) if value is not None else None


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(255))
    task: Mapped[str] = mapped_column(String(32))  # single_label | multi_label | chat
    format: Mapped[str] = mapped_column(String(16))  # csv | tsv | json | jsonl | parquet
    encoding: Mapped[str] = mapped_column(String(32))
    text_column: Mapped[str | None] = mapped_column(String(255))
    label_columns: Mapped[list[Any]] = mapped_column(JSON, default=list)
    labels: Mapped[list[Any]] = mapped_column(JSON, default=list)  # ordered: the model's id2label
    num_rows: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    label_distribution: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    rejected_rows: Mapped[list[Any]] = mapped_column(JSON, default=list)
    warnings: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # The rest of the validation report: duplicates, length percentiles, inference reasons.
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    # Directory holding train.parquet / validation.parquet / test.parquet.
    storage_path: Mapped[str] = mapped_column(Text)
    # "fine-tune" for a file uploaded through /v1/files (those are what /v1/files lists).
    purpose: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    jobs: Mapped[list[Job]] = relationship(back_populates="dataset", passive_deletes=True)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    # NULL once the dataset was deleted: a finished job keeps its history and its model.
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL", name="fk_jobs_dataset_id_datasets"), index=True)
    base_model: Mapped[str] = mapped_column(Text)
    # The model row this job continues from, when base_model named a tuned model.
    base_model_id: Mapped[str | None] = mapped_column(String(40), index=True)
    # The experiment this job is one model of (POST /experiments); None for a job on its own.
    experiment_id: Mapped[str | None] = mapped_column(String(40), index=True)
    # A search experiment's trial: the Optuna trial number this job is (core/search.py).
    search_trial: Mapped[int | None] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(32))
    # A JobState value (core/jobstate.py, which makes every change to it).
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    epoch: Mapped[float] = mapped_column(Float, default=0.0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    eta_s: Mapped[float | None] = mapped_column(Float)
    micro_batch_size: Mapped[int | None] = mapped_column(Integer)
    grad_accum_steps: Mapped[int | None] = mapped_column(Integer)
    eval_batch_size: Mapped[int | None] = mapped_column(Integer)
    peak_memory_mb: Mapped[float | None] = mapped_column(Float)
    device: Mapped[str | None] = mapped_column(String(64))
    best_metric_name: Mapped[str | None] = mapped_column(String(64))
    best_metric: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    # Whose fault a failure was: data (the user's data or settings), environment (disk,
    # memory, a missing package) or bug (tuneserve's own).
    error_kind: Mapped[str | None] = mapped_column(String(16))
    model_id: Mapped[str | None] = mapped_column(String(40))
    comparison: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The memory plan made before the model loaded (core/planning: each term in GiB, the free
    # memory, the chosen quantization, optimizer and checkpointing, and why); a resumed attempt
    # keeps its choices, which its checkpoints were trained with.
    memory_plan: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # learning_rate "auto": the rate the range test chose (its curve is the lr_range_test event).
    chosen_learning_rate: Mapped[float | None] = mapped_column(Float)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # What only the OpenAI-compatible API (/v1/fine_tuning/jobs) speaks of; null for other jobs.
    suffix: Mapped[str | None] = mapped_column(String(64))  # in the model name ft:<base>:<suffix>:<id>
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    training_file: Mapped[str | None] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40))
    # Paused: cancelled at the caller's request to continue later; /v1 shows it as "paused".
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The hyperparameters as sent, what each became ("auto" resolved) and why.
    fine_tuning: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    dataset: Mapped[Dataset | None] = relationship(back_populates="jobs")


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class MetricPoint(Base):
    __tablename__ = "metric_points"
    __table_args__ = (Index("ix_metric_points_job_kind_step", "job_id", "kind", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # train | eval (test, generate later)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float] = mapped_column(Float)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ckpt"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[float] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    path: Mapped[str] = mapped_column(Text)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False)
    # False once the files were pruned (keep best + last k); the row keeps the metrics.
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class TunedModel(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mdl"))
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    job_id: Mapped[str | None] = mapped_column(String(40), index=True)
    base_model: Mapped[str] = mapped_column(Text)
    task: Mapped[str] = mapped_column(String(32))
    labels: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # Multi-label decision thresholds tuned on validation, label -> threshold.
    thresholds: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    max_seq_length: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ApiKey(Base):
    """A caller. Only the SHA-256 of the key's secret is stored: the key is shown once, at
    creation. Its id is the tenant_id of everything made with it."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    name: Mapped[str] = mapped_column(String(255))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Experiment(Base):
    """Several base models fine-tuned on one dataset with the same hyperparameters and seed:
    one job each (Job.experiment_id), compared in a leaderboard beside the baselines.

    No foreign keys: the jobs are found by experiment_id and deleted through the job deletion
    path, and the dataset may be deleted once the jobs are done (their figures stay)."""

    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("exp"))
    tenant_id: Mapped[str | None] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(255))
    dataset_id: Mapped[str] = mapped_column(String(40), index=True)
    task: Mapped[str] = mapped_column(String(32))
    base_models: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # The job of each base model, in the same order (a job records its base model resolved: a
    # local directory as an absolute path).
    job_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    overrides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # What the leaderboard ranks by and the recommendation names (the jobs' metric_for_best_model).
    primary_metric: Mapped[str] = mapped_column(String(64))
    # A search experiment (None: one job per base model): its space, sampler, pruner, trials and
    # parallelism as validated; the Optuna study of the same name is in Optuna's tables.
    search: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)
