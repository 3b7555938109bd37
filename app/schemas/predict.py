"""Prediction payloads: POST /predict. Limits that come from settings (number of texts,
characters per text) are checked by the route, so the 422 names the configured values."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import MAX_INT32, CleanStr, Id, JsonTypes


class PredictRequest(JsonTypes):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    model_id: Id
    # minItems is documented, not enforced here: the route's 422 names the configured limits.
    texts: list[CleanStr] = Field(description="Texts to classify; the answer keeps their order.",
                                  json_schema_extra={"minItems": 1})
    top_k: int | None = Field(
        None, ge=1, le=MAX_INT32, description="Return only the k best scores per text (highest first)."
    )
    threshold: float | None = Field(
        None, ge=0, le=1,
        description="Multi-label only: one decision threshold for every label instead of the "
        "per-label thresholds tuned at training time.",
    )


class SingleLabelPrediction(BaseModel):
    label: str = Field(description="The most probable label.")
    scores: dict[str, float] = Field(description="Softmax probability per label.")
    truncated: bool = Field(description="The text was longer than the model's max length and was cut.")


class MultiLabelPrediction(BaseModel):
    labels: list[str] = Field(description="Every label whose probability reaches its threshold.")
    scores: dict[str, float] = Field(description="Sigmoid probability per label.")
    truncated: bool = Field(description="The text was longer than the model's max length and was cut.")


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    predictions: list[SingleLabelPrediction] | list[MultiLabelPrediction] = Field(
        description="One per text, in order."
    )
