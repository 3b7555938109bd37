"""Memory plan payloads: POST /plan (will a model fit, before any job runs) and a job's
`memory_plan`. The fields are core/planning/plan.py's MemoryPlan.to_dict()."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas.common import CleanStr
from core.jobspec import Hyperparameters


class PlanCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    base_model: CleanStr = Field(min_length=1, max_length=1024,
                                 description="Hub name (in the server's cache), local directory or a tuned "
                                 "model's id: only its config.json is read.")
    task: Literal["chat", "single_label", "multi_label"] = Field(
        "chat", description="chat plans a causal LM (LoRA by default); the others a fully fine-tuned "
        "classifier.")
    gpu_memory_gib: float | None = Field(
        None, gt=0, le=4096, description="Plan for a GPU with this much free memory; default: "
        "TUNESERVE_DEVICE_MEMORY_GIB of the server.")
    bf16: bool = Field(True, description="The GPU computes in bf16 (Ampere or newer); false: fp16.")
    hyperparameters: Hyperparameters = Field(
        default_factory=Hyperparameters,
        description="As a job would send them: max_seq_length, finetuning, quantization, optimizer, lora_r, "
        "batch_size, gradient_checkpointing... (the task's defaults apply where unset).")


class PlanDevice(BaseModel):
    kind: str
    name: str
    free_gib: float
    total_gib: float
    cap_gib: float | None
    budget_gib: float = Field(description="What the plan fits into: the free memory under the cap.")
    bf16: bool


class PlanParams(BaseModel):
    total: int
    quantizable: int = Field(description="Weights in linear layers that 4/8-bit quantization converts.")
    trainable: int


class PlanChoice(BaseModel):
    quantization: Literal["none", "8bit", "4bit"]
    optimizer: Literal["adamw", "adamw_8bit"]
    gradient_checkpointing: bool
    max_micro_batch_size: int = Field(description="The largest micro-batch estimated to fit (0: none); the "
                                      "worker's probe measures the real one.")
    compute_dtype: str


class PlanTerms(BaseModel):
    weights: float
    gradients: float
    optimizer: float
    activations: float = Field(description="At micro-batch 1 of the longest sequence.")
    activations_per_sample: float
    overhead: float
    total: float


class PlanOption(BaseModel):
    quantization: str
    optimizer: str
    gradient_checkpointing: bool
    total_gib: float
    fits: bool
    max_micro_batch_size: int


class MemoryPlanPublic(BaseModel):
    base_model: str
    fits: bool
    message: str = Field(description="What was chosen, or the numbers of why nothing fits.")
    task: str
    finetuning: Literal["lora", "full"]
    sequence_length: int
    device: PlanDevice
    params: PlanParams
    choice: PlanChoice
    terms_gib: PlanTerms = Field(description="Each term of the chosen option (or of the smallest one when "
                                 "nothing fits), in GiB, at micro-batch 1.")
    reasons: dict[str, str] = Field(description="Why each choice: quantization, optimizer, "
                                    "gradient_checkpointing.")
    options: list[PlanOption]
