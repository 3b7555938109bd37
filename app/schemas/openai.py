"""Payloads of the OpenAI-compatible routes (/v1), field for field as OpenAI's published API names
them, for the fields tuneserve supports. Requests forbid every other field: a parameter that
would be silently ignored is a 400 that names it instead (app/routes/openai/errors.py).

Times are Unix seconds, as OpenAI's objects have them (the native API's are ISO 8601).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from app.schemas.common import CleanStr, Id

MAX_SEED = 2**31 - 1
Auto = Literal["auto"]
# Up to 16 pairs, keys up to 64 and values up to 512 characters (OpenAI's limits).
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[CleanStr, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]
# It sits between colons in the model's name: no colon, no space.
Suffix = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
StopString = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error, server_error, ...")
    param: str | None = Field(description="The request parameter at fault, when one is.")
    code: str | None = Field(description="A machine-readable code, e.g. model_not_found.")


class OpenAIErrorOut(BaseModel):
    """Every /v1 4xx and 5xx body."""

    error: OpenAIErrorDetail


# ---- files -------------------------------------------------------------------------------------

class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


# ---- fine-tuning jobs --------------------------------------------------------------------------

class SupervisedHyperparameters(Request):
    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = Field(
        "auto", description="auto: from the training set's size, as OpenAI picks it (see the README).")
    batch_size: Auto | Annotated[int, Field(ge=1, le=4096)] = Field(
        "auto", description="The effective batch. auto: 32, or the number of training examples if fewer.")
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=100)] = Field(
        "auto", description="Times the family's default learning rate (chat: 2e-4). auto: tuneserve's "
        "learning-rate range test chooses the rate before the first step.")


class Supervised(Request):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class Method(Request):
    type: Literal["supervised"] = Field(description="Only supervised fine-tuning (SFT) is supported.")
    supervised: Supervised | None = None


class FineTuningJobCreate(Request):
    model: Annotated[CleanStr, Field(min_length=1, max_length=1024)] = Field(
        description="The base model: a hub name, a local directory the key may use, or a tuned model's id.")
    training_file: Id = Field(description="A file id from POST /v1/files (or a chat dataset's id).")
    validation_file: Id | None = Field(
        None, description="Held-out conversations; without one, 20% of the training file is held out.")
    suffix: Suffix | None = Field(None, description="Put into the tuned model's name: "
                                  "ft:<base>:<suffix>:<model id>.")
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = Field(None, description="Default 42.")
    metadata: Metadata | None = None
    method: Method | None = None
    hyperparameters: SupervisedHyperparameters | None = Field(
        None, description="Deprecated by OpenAI in favour of method.supervised.hyperparameters.")
    integrations: list[dict[str, Any]] | None = Field(None, description="None are supported: an empty list.")

    @field_validator("integrations")
    @classmethod
    def _no_integrations(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("integrations (such as Weights & Biases) are not supported by tuneserve: "
                             "the job's metrics are in GET /jobs/{id}/metrics and its TensorBoard "
                             "files; remove them")
        return value

    @model_validator(mode="after")
    def _one_place_for_hyperparameters(self) -> FineTuningJobCreate:
        nested = self.method is not None and self.method.supervised is not None
        if self.hyperparameters is not None and nested:
            raise ValueError("give hyperparameters in method.supervised.hyperparameters or at the top "
                             "level, not both")
        return self

    def supervised_hyperparameters(self) -> SupervisedHyperparameters:
        if self.method is not None and self.method.supervised is not None:
            return self.method.supervised.hyperparameters
        return self.hyperparameters or SupervisedHyperparameters()


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(BaseModel):
    n_epochs: int | float
    batch_size: int
    learning_rate_multiplier: float | Literal["auto"] = Field(
        ..., description='"auto" until the range test has chosen the rate, then that rate over the '
        "family's default.")


class MethodOut(BaseModel):
    type: Literal["supervised"] = "supervised"
    supervised: dict[str, JobHyperparameters]


FineTuningStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled",
                           "paused"]


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None = Field(description="ft:<base>:<suffix>:<model id>, once it succeeded.")
    organization_id: str
    status: FineTuningStatus = Field(description="OpenAI's statuses; `paused` after POST .../pause.")
    error: JobError | None
    hyperparameters: JobHyperparameters
    method: MethodOut
    training_file: str
    validation_file: str | None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None = Field(description="Tokens read by training (epochs x tokens per epoch).")
    estimated_finish: int | None
    seed: int
    suffix: str | None = None
    user_provided_suffix: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[Any] | None = None


class FineTuningJobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class FineTuningJobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobEvent]
    has_more: bool


class CheckpointMetrics(BaseModel):
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    step_number: int


class FineTuningJobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJobCheckpoint]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


# ---- models ------------------------------------------------------------------------------------

class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


# ---- chat completions --------------------------------------------------------------------------

class TextPart(Request):
    type: Literal["text"]
    text: CleanStr


class ChatMessageIn(Request):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="developer is read as system; tool turns are not supported.")
    content: CleanStr | Annotated[list[TextPart], Field(min_length=1)]
    name: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        None, description="Accepted and not sent to the model (chat templates have no place for it).")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(Request):
    include_usage: bool = False


class ResponseFormat(Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionCreate(Request):
    model: Annotated[str, StringConstraints(min_length=1, max_length=1200)]
    messages: Annotated[list[ChatMessageIn], Field(min_length=1, max_length=1000)]
    max_tokens: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=8)] | None = None
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = None
    seed: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        None, description="An end-user id; accepted for compatibility, it changes nothing.")
    # Known to OpenAI and refused with a 400 that says so, unless given as their no-op value.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None

    def unsupported(self) -> str | None:
        """The first parameter given with a value tuneserve cannot honour, or None."""
        if self.tools:
            return "tools"
        if self.tool_choice not in (None, "none"):
            return "tool_choice"
        if self.response_format is not None and self.response_format.type != "text":
            return "response_format"
        if self.logprobs:
            return "logprobs"
        if self.top_logprobs is not None:
            return "top_logprobs"
        if self.frequency_penalty:
            return "frequency_penalty"
        if self.presence_penalty:
            return "presence_penalty"
        return None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
