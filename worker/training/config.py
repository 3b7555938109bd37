"""The run's configuration (TrainConfig: the job's hyperparameters plus the worker's settings)
and the state the loop changes as it goes (LoopState: saved whole in every checkpoint)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.jobspec import DEFAULT_DATA_ORDER

if TYPE_CHECKING:
    from core.jobspec import Hyperparameters
    from core.settings import Settings


def _runtime(default: Any) -> Any:
    """A field that comes from the worker's settings, not from the job: a resumed run keeps the
    current value instead of the checkpoint's (fault injection, threads, where it runs)."""
    return field(default=default, metadata={"runtime": True})


@dataclass
class TrainConfig:
    # --- from the job's hyperparameters --------------------------------------------------
    epochs: float = 3.0                    # passes over the training split (may be fractional)
    max_steps: int | None = None           # optimizer steps; overrides epochs when set
    # Peak learning rate, after warmup; "auto": chosen by a range test before training
    # (lr_range.py), and the chosen number replaces "auto" here, so checkpoints carry it.
    learning_rate: float | str = 2e-5
    batch_size: int = 32                   # the EFFECTIVE batch: samples per optimizer step
    micro_batch_size: int | None = None    # forced micro-batch (skips the probe); must divide batch_size
    eval_batch_size: int | None = None     # None: start at 2x the micro-batch, shrink on OOM
    max_seq_length: int = 128              # tokens; longer texts are truncated by the task
    warmup_ratio: float = 0.1              # fraction of the optimizer steps spent warming up
    weight_decay: float = 0.01             # AdamW decay, not applied to biases and norms
    lr_scheduler: str = "linear"           # linear | cosine | constant (after warmup)
    max_grad_norm: float | None = 1.0      # gradient clipping; None turns it off
    seed: int = 42                         # data order, dropout, head init
    data_order: str = DEFAULT_DATA_ORDER   # random | windowed | grouped (data_order.py)
    eval_strategy: str = "epoch"           # epoch | steps
    eval_steps: int | None = None          # eval_strategy=steps: evaluate every N optimizer steps
    logging_steps: int = 10                # a train metric point every N optimizer steps
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    metric_for_best_model: str = "f1_macro"     # picks the best checkpoint; direction from the task
    load_best_model_at_end: bool = True    # the caller exports the best checkpoint, else the last
    class_weights: str = "off"             # off | auto (read by the task, kept here for the record)
    precision: str = "auto"                # auto | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False   # from the start; it is also the last OOM resort
    # The memory plan's choices (worker/job/plan.py): the job's auto resolved before loading.
    quantization: str = "auto"             # chat LoRA base: none | 8bit | 4bit (auto: as planned)
    optimizer: str = "auto"                # adamw | adamw_8bit (auto: adamw)
    # The plan's sentence (terms, free memory), quoted by the last rung of the OOM ladder.
    memory_plan_message: str | None = _runtime(None)
    finetuning: str = "auto"               # chat: auto|lora (adapters) | full (read by the task)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | None = None  # None: the architecture's default (families/chat.py)
    system_prompt: str | None = None       # chat: a system turn for conversations without one
    # --- from the worker's settings ------------------------------------------------------
    max_micro_batch_size: int = _runtime(256)    # largest micro-batch the probe tries
    keep_last_checkpoints: int = _runtime(2)     # besides the best one; at least 1 is kept
    torch_threads: int = _runtime(0)             # CPU threads for torch; 0: torch's default
    device: str = _runtime("auto")               # auto (cuda when available) | cpu | cuda | cuda:N
    fault_oom_above_micro_batch: int | None = _runtime(None)  # see core/settings.py
    fault_oom_from_step: int = _runtime(0)
    fault_oom_above_eval_batch: int | None = _runtime(None)
    fault_step_delay_s: float = _runtime(0.0)
    # A checkpoint at least this often (besides every evaluation and epoch end): what a killed
    # worker can lose. See core/settings.py.
    checkpoint_interval_s: float = _runtime(600.0)
    fault_disk_full_from_step: int | None = _runtime(None)

    @classmethod
    def from_hyperparameters(cls, hp: Hyperparameters, settings: Settings) -> TrainConfig:
        job = {f.name: getattr(hp, f.name) for f in dataclasses.fields(cls)
               if not f.metadata.get("runtime") and hasattr(hp, f.name)}
        return cls(
            **job,
            max_micro_batch_size=settings.max_micro_batch_size,
            keep_last_checkpoints=settings.keep_last_checkpoints,
            torch_threads=settings.torch_threads,
            fault_oom_above_micro_batch=settings.fault_oom_above_micro_batch,
            fault_oom_from_step=settings.fault_oom_from_step,
            fault_oom_above_eval_batch=settings.fault_oom_above_eval_batch,
            fault_step_delay_s=settings.fault_step_delay_s,
            checkpoint_interval_s=settings.checkpoint_interval_s,
            fault_disk_full_from_step=settings.fault_disk_full_from_step,
        )

    def with_job_fields_of(self, saved: Mapping[str, Any]) -> TrainConfig:
        """This config with the job's fields taken from a checkpoint (a resumed run continues the
        run it resumes), the runtime fields kept from now."""
        names = {f.name for f in dataclasses.fields(self) if not f.metadata.get("runtime")}
        return dataclasses.replace(self, **{k: v for k, v in saved.items() if k in names})


@dataclass
class LoopState:
    """Everything the loop changes as it goes; saved whole in every checkpoint."""

    global_step: int = 0                    # optimizer steps done
    micro_batch_size: int = 1
    eval_batch_size: int = 1
    gradient_checkpointing: bool = False
    best_metric: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    last_metrics: dict[str, Any] = field(default_factory=dict)
    evals_without_improvement: int = 0
    early_stopped: bool = False
    eval_losses: list[float] = field(default_factory=list)  # the trend, for the fit diagnosis
    probe: dict[str, Any] = field(default_factory=dict)
    # The train losses summed since the last train point and since the last evaluation: a
    # checkpoint between them (by time, at an epoch end, at a cancel) resumes them exactly.
    train_interval: dict[str, Any] = field(default_factory=dict)
    since_eval: dict[str, Any] = field(default_factory=dict)
