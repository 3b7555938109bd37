"""Job payloads: what a user sends to POST /jobs and what every job read returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import CleanStr, Id, JsonTypes
from core.jobspec import Hyperparameters
from core.jobstate import JobState

__all__ = ["Hyperparameters", "JobCreate", "JobPublic", "JobsPublic", "JobEventPublic", "CheckpointPublic"]


class JobCreate(JsonTypes):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset_id: Id
    base_model: CleanStr | None = Field(
        None, min_length=1, max_length=1024,
        description="Hub name, local directory or a tuned model's id; default: the bundled MiniLM.",
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    dataset_id: str | None = Field(description="Null once the dataset was deleted (the job's history stays).")
    experiment_id: str | None = None
    base_model: str
    task: str
    state: JobState
    progress: float
    epoch: float
    step: int
    total_steps: int | None
    eta_s: float | None
    micro_batch_size: int | None
    grad_accum_steps: int | None
    eval_batch_size: int | None
    peak_memory_mb: float | None
    device: str | None
    best_metric_name: str | None
    best_metric: float | None
    hyperparameters: dict[str, Any]
    chosen_learning_rate: float | None = Field(
        None, description='learning_rate "auto": the rate the range test chose, which the job trains '
        "at (the lr_range_test event holds the curve).")
    error: str | None
    error_kind: Literal["data", "environment", "bug"] | None = Field(
        None, description="Whose fault a failure was: the data or job settings, the environment "
        "(disk, memory, a missing package), or a bug in tuneserve.")
    model_id: str | None
    attempts: int
    memory_plan: dict[str, Any] | None = Field(
        None, description="Made before the model loaded: each term in GiB, the free memory, the chosen "
        "quantization, optimizer and gradient checkpointing and why (POST /plan's fields).")
    disk_bytes: int = Field(0, description="Bytes on disk: the job's checkpoints plus its tuned model.")
    resume_from_step: int | None = Field(
        None, description="The step a resume (or a new worker) continues from: its newest checkpoint "
        "with training state; null when it has none and would start from the beginning.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class JobEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    time: datetime
    kind: str
    message: str
    data: dict[str, Any] | None = None


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    step: int
    epoch: float
    metrics: dict[str, Any]
    path: str
    is_best: bool
    available: bool
    created_at: datetime
