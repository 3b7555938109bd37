"""Tuned-model payloads: what GET /models and GET /models/{id} return."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: str
    job_id: str | None = Field(description="The job that trained it.")
    base_model: str = Field(description="What the job started from: hub name, path or a model id.")
    task: str = Field(description="single_label or multi_label.")
    labels: list[str] = Field(description="Ordered label names: the model's id2label.")
    thresholds: dict[str, float] | None = Field(
        description="Multi-label decision thresholds tuned on validation, label -> threshold."
    )
    metrics: dict[str, Any] = Field(description="Final evaluation metrics of the training job.")
    max_seq_length: int | None = Field(description="Longer texts are truncated (and flagged) by /predict.")
    size_bytes: int = Field(description="Size of the model directory on disk.")
    created_at: datetime

    @field_validator("labels", mode="before")
    @classmethod
    def _label_names(cls, value: list[object]) -> list[str]:
        """Label names as JSON object keys will show them (a dataset's labels may be 0/1)."""
        return [str(label) for label in value]


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int
