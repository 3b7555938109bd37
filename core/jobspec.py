"""The job spec: what a job asks of training. Shared by the API (POST /jobs validates it) and the
worker (which reads it back from the job row), so neither reaches into the other's modules."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict

# Step counts are stored in 32-bit SQL integers; numpy and torch take 32-bit seeds.
MAX_INT32 = 2**31 - 1
MAX_SEED = 2**32 - 1
# The rule of _storable_text as JSON Schema states it (no NUL byte), so the OpenAPI document
# says it; a lone surrogate cannot occur in a JSON document's well-formed text anyway.
NO_NUL_PATTERN = "^[^\\u0000]*$"
# The training data orders (worker/training/data_order.py says what each is), and the default: the
# one word to change when the benchmark (bench/order_bench.py) picks another.
DataOrder = Literal["random", "windowed", "grouped"]
DATA_ORDERS: tuple[str, ...] = get_args(DataOrder)
DEFAULT_DATA_ORDER: DataOrder = "grouped"
# Per data_order, the pool of optimizer-step windows sorted by length together (1: random order).
DATA_ORDER_POOL_WINDOWS: dict[str, int] = {"random": 1, "windowed": 4, "grouped": 50}


def _scalar_kind(annotation: Any) -> str | None:
    """'boolean' or 'number' for a field typed bool or int/float (optional or annotated)."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return _scalar_kind(inner[0]) if len(inner) == 1 else None
    if annotation is bool:
        return "boolean"
    return "number" if annotation in (int, float) else None


_JSON_NAMES = {bool: "a boolean", str: "a string", list: "an array", dict: "an object"}


class JsonTypes(BaseModel):
    """A payload read with JSON's own types: a boolean is not a number (pydantic's lax mode
    takes `true` as 1), a string is neither (nor "1" a number); 32.0 is still the integer 32,
    as JSON Schema has it."""

    @field_validator("*", mode="before")
    @classmethod
    def _json_types(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None or info.field_name is None:
            return value
        kind = _scalar_kind(cls.model_fields[info.field_name].annotation)
        wrong = (kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float))) or (
            kind == "boolean" and not isinstance(value, bool))
        if wrong:
            given = _JSON_NAMES.get(type(value), type(value).__name__)
            raise ValueError(f"must be a JSON {kind}, not {given}")
        return value


def _storable_text(value: str) -> str:
    """No NUL byte (PostgreSQL text cannot hold one) and no lone surrogate (not encodable as
    UTF-8, so the tokenizer fails on it): app/schemas/common.py's CleanStr rule, for the job spec."""
    if "\x00" in value:
        raise ValueError("contains a NUL byte (\\u0000); remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"contains a lone surrogate at character {e.start}; send proper UTF-8 text") from e
    return value


Text = Annotated[str, AfterValidator(_storable_text), Field(json_schema_extra={"pattern": NO_NUL_PATTERN})]
# A module name as peft matches it (a suffix such as q_proj, or a dotted path).
ModuleName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.]+$")]


# What _check_consistency enforces, as far as JSON Schema can state it: eval_strategy "steps"
# needs an eval_steps that is a number. (That micro_batch_size divides batch_size is arithmetic
# between two fields, which JSON Schema cannot state: the field descriptions say it.)
_EVAL_STEPS_RULE: JsonDict = {
    "if": {"properties": {"eval_strategy": {"const": "steps"}}, "required": ["eval_strategy"]},
    "then": {"properties": {"eval_steps": {"type": "integer"}}, "required": ["eval_steps"]},
}


class Hyperparameters(JsonTypes):
    """Every field is optional; the defaults follow the seed scripts users already run."""

    # NaN and Infinity are valid JSON to Python's parser, but no learning rate or ratio.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, json_schema_extra=_EVAL_STEPS_RULE)

    epochs: float = Field(3.0, gt=0, le=100, description="Passes over the training split.")
    max_steps: int | None = Field(
        None, ge=1, le=MAX_INT32,
        description="Stop after this many optimizer steps (overrides epochs when set).",
    )
    learning_rate: Annotated[float, Field(gt=0, le=1.0)] | Literal["auto"] = Field(
        2e-5, description='The peak learning rate, or "auto": chosen before training by a learning-rate '
        "range test (the lr_range_test event holds its curve; the job's learning_rate field the rate).",
    )
    batch_size: int = Field(
        32, ge=1, le=4096,
        description="The effective batch: samples per optimizer step. The service picks the "
        "micro-batch that fits the GPU and makes up the rest by gradient accumulation.",
    )
    micro_batch_size: int | None = Field(
        None, ge=1, le=4096,
        description="Force this micro-batch instead of probing (must divide batch_size, else a 422).",
    )
    eval_batch_size: int | None = Field(None, ge=1, le=4096, description="Default: probed, like training.")
    max_seq_length: int = Field(128, ge=8, le=8192, description="Longer texts are truncated.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0, le=1)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = Field(
        1.0, gt=0, le=1e6, description="Gradient clipping; null turns it off."
    )
    seed: int = Field(42, ge=0, le=MAX_SEED)
    data_order: DataOrder = Field(
        DEFAULT_DATA_ORDER,
        description="How each epoch orders the training rows. random: every optimizer step's batch is a "
        "random sample (padding as it falls); windowed: rows sorted by length within pools of "
        f"{DATA_ORDER_POOL_WINDOWS['windowed']} steps' batches, so each batch is still close to a sample; "
        f"grouped: within pools of {DATA_ORDER_POOL_WINDOWS['grouped']} batches, the least padding. The "
        "order is a function of seed and epoch, so a resumed job sees the same.",
    )
    eval_strategy: Literal["epoch", "steps"] = "epoch"
    eval_steps: int | None = Field(
        None, ge=1, le=MAX_INT32, description="eval_strategy=steps: evaluate every N steps."
    )
    logging_steps: int = Field(
        10, ge=1, le=MAX_INT32, description="Record a train metric point every N optimizer steps."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, le=10_000, description="Stop after this many evaluations without improvement."
    )
    metric_for_best_model: str = Field(
        "f1_macro", max_length=64,
        description="Eval metric that picks the best checkpoint (loss: lower is better).",
    )
    load_best_model_at_end: bool = True
    class_weights: Literal["off", "auto"] = Field(
        "off", description="auto: weight classes (or positive labels) by inverse frequency."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU that supports it, else fp16 on GPU, fp32 on CPU."
    )
    gradient_checkpointing: bool = Field(
        False, description="Trade compute for memory from the start (it is also the last OOM resort)."
    )
    optimizer: Literal["auto", "adamw", "adamw_8bit"] = Field(
        "auto", description="auto: AdamW, or bitsandbytes' paged 8-bit AdamW when AdamW's full-precision "
        "state would not fit the GPU (the memory plan decides before the model loads)."
    )
    # --- chat only --------------------------------------------------------------------------
    quantization: Literal["auto", "none", "8bit", "4bit"] = Field(
        "auto", description="chat LoRA: the frozen base's precision. auto keeps its own dtype (bf16) when "
        "it fits the GPU, else 8-bit, else 4-bit NF4 with double quantization (QLoRA); none never quantizes."
    )
    finetuning: Literal["auto", "lora", "full"] = Field(
        "auto", description="chat: auto = LoRA adapters on a frozen base, full = every weight trains. "
        "Classifiers are always fully fine-tuned."
    )
    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_target_modules: list[ModuleName] | None = Field(
        None, min_length=1, max_length=64,
        description="Module names LoRA wraps; default per architecture (Llama-family: q/k/v/o_proj).",
    )
    system_prompt: Text | None = Field(
        None, min_length=1, max_length=8000,
        description="chat: a system turn added to every conversation that has none (and to /generate).",
    )

    @model_validator(mode="after")
    def _check_consistency(self) -> Hyperparameters:
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("eval_strategy 'steps' needs eval_steps (evaluate every N optimizer steps)")
        if self.quantization in ("8bit", "4bit") and self.finetuning == "full":
            raise ValueError(
                f"quantization {self.quantization} trains LoRA adapters on a frozen quantized base; a full "
                "fine-tune updates every weight, which cannot be stored in 4 or 8 bits: use finetuning lora "
                "(or auto), or quantization auto"
            )
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size {self.micro_batch_size} must divide batch_size {self.batch_size} "
                "so that micro-batch x accumulation equals the effective batch exactly"
            )
        return self
