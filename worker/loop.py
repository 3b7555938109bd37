"""The training loop: task-agnostic, read top to bottom.

    config -> protocols -> setup (device, precision, seed, optimizer) -> the data order
    -> the adaptive batch (probe, OOM recovery, accumulation) -> evaluate -> checkpoints
    -> run_training, the one loop that steps, logs, evaluates and checkpoints.

The task (worker/classification.py; later a chat task) supplies the model, tokenized examples,
collation, the loss as (sum, units) and its metrics. This file knows nothing of labels or tokens.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import random
import re
import resource
import shutil
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from app.store import atomic_dir
from worker import faults
from worker.metrics import diagnose_fit

if TYPE_CHECKING:
    from app.schemas.jobs import Hyperparameters
    from app.settings import Settings

log = logging.getLogger("tuneserve.worker.loop")

TRAINING_STATE_FILE = "training_state.pt"
CHECKPOINT_PREFIX = "step-"
# Bumped when training_state.pt changes shape; an older checkpoint is then not resumed from.
STATE_FORMAT = 1


class TrainingError(Exception):
    """A failure the user can act on; its message is shown as the job's `error`."""


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

def _runtime(default: Any) -> Any:
    """A field that comes from the worker's settings, not from the job: a resumed run keeps the
    current value instead of the checkpoint's (fault injection, threads, where it runs)."""
    return field(default=default, metadata={"runtime": True})


@dataclass
class TrainConfig:
    # --- from the job's hyperparameters --------------------------------------------------
    epochs: float = 3.0                    # passes over the training split (may be fractional)
    max_steps: int | None = None           # optimizer steps; overrides epochs when set
    learning_rate: float = 2e-5            # peak learning rate, after warmup
    batch_size: int = 32                   # the EFFECTIVE batch: samples per optimizer step
    micro_batch_size: int | None = None    # forced micro-batch (skips the probe); must divide batch_size
    eval_batch_size: int | None = None     # None: start at 2x the micro-batch, shrink on OOM
    max_seq_length: int = 128              # tokens; longer texts are truncated by the task
    warmup_ratio: float = 0.1              # fraction of the optimizer steps spent warming up
    weight_decay: float = 0.01             # AdamW decay, not applied to biases and norms
    lr_scheduler: str = "linear"           # linear | cosine | constant (after warmup)
    max_grad_norm: float | None = 1.0      # gradient clipping; None turns it off
    seed: int = 42                         # data order, dropout, head init
    eval_strategy: str = "epoch"           # epoch | steps
    eval_steps: int | None = None          # eval_strategy=steps: evaluate every N optimizer steps
    logging_steps: int = 10                # a train metric point every N optimizer steps
    early_stopping_patience: int | None = None  # evaluations without improvement before stopping
    metric_for_best_model: str = "f1_macro"     # picks the best checkpoint; direction from the task
    load_best_model_at_end: bool = True    # the caller exports the best checkpoint, else the last
    class_weights: str = "off"             # off | auto (read by the task, kept here for the record)
    precision: str = "auto"                # auto | fp32 | bf16 | fp16
    gradient_checkpointing: bool = False   # from the start; it is also the last OOM resort
    # --- from the worker's settings ------------------------------------------------------
    max_micro_batch_size: int = _runtime(256)    # largest micro-batch the probe tries
    keep_last_checkpoints: int = _runtime(2)     # besides the best one; at least 1 is kept
    torch_threads: int = _runtime(0)             # CPU threads for torch; 0: torch's default
    device: str = _runtime("auto")               # auto (cuda when available) | cpu | cuda | cuda:N
    # Length grouping: sort pools of this many optimizer-step windows by length, so each
    # micro-batch pads to similar lengths (the pool keeps the order random across pools).
    length_group_windows: int = _runtime(50)
    fault_oom_above_micro_batch: int | None = _runtime(None)  # see app/settings.py
    fault_oom_from_step: int = _runtime(0)
    fault_oom_above_eval_batch: int | None = _runtime(None)
    fault_step_delay_s: float = _runtime(0.0)

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
        )

    def with_job_fields_of(self, saved: Mapping[str, Any]) -> TrainConfig:
        """This config with the job's fields taken from a checkpoint (a resumed run continues the
        run it resumes), the runtime fields kept from now."""
        names = {f.name for f in dataclasses.fields(self) if not f.metadata.get("runtime")}
        return dataclasses.replace(self, **{k: v for k, v in saved.items() if k in names})


# --------------------------------------------------------------------------------------------
# What the loop talks to: the task, the sink, and what it returns
# --------------------------------------------------------------------------------------------

# One tokenized example as the task made it; the loop reads only its "length" (in tokens).
Example = Mapping[str, Any]


class TrainingTask(Protocol):
    # Read-only properties, so a dataclass with narrower field types (list, frozenset) conforms.
    @property
    def model(self) -> torch.nn.Module: ...
    @property
    def model_name(self) -> str: ...                     # for messages ("X does not fit")
    @property
    def train_examples(self) -> Sequence[Example]: ...
    @property
    def eval_examples(self) -> Sequence[Example]: ...
    @property
    def metric_names(self) -> Collection[str]: ...       # compute_metrics' keys, "loss" included
    @property
    def baseline_loss(self) -> float | None: ...         # an uninformed model's loss (fit diagnosis)

    def loss_units(self, examples: Sequence[Example]) -> int:
        """What the loss is averaged over in these examples: samples, or target tokens."""
        ...

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """A CPU batch padded to its own longest example."""
        ...

    def forward(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        """(loss summed over the batch's units, raw output for eval_payload)."""
        ...

    def eval_payload(self, output: Any, batch: dict[str, torch.Tensor]) -> Any:
        """What compute_metrics needs from one evaluation batch, moved off the device."""
        ...

    def compute_metrics(self, payloads: list[Any]) -> dict[str, Any]:
        ...

    def greater_is_better(self, metric: str) -> bool:
        ...

    def save_checkpoint(self, directory: Path) -> None:
        """The servable files of the model as it is now (HF directory, tokenizer, meta)."""
        ...

    def load_checkpoint(self, directory: Path) -> None:
        """Load the weights saved by save_checkpoint into self.model, in place."""
        ...


class TrainingSink(Protocol):
    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None: ...
    def train_point(self, step: int, epoch: float, values: dict[str, Any]) -> None: ...
    def eval_point(self, step: int, epoch: float, values: dict[str, Any]) -> None: ...
    def checkpoint_saved(self, step: int, epoch: float, metrics: dict[str, Any], path: Path,
                         is_best: bool) -> None: ...
    def checkpoint_removed(self, path: Path) -> None: ...
    def progress(self, **fields: Any) -> None: ...
    def should_stop(self) -> bool: ...


@dataclass
class TrainResult:
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    final_metrics: dict[str, Any]
    best_metrics: dict[str, Any]
    global_step: int
    cancelled: bool
    early_stopped: bool
    resumed_from_step: int | None
    micro_batch_size: int = 0
    grad_accum_steps: int = 0
    eval_batch_size: int = 0


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


# --------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------

def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def pick_precision(requested: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed)."""
    if device.type == "cuda":
        if requested == "fp32":
            return None, False
        if requested in ("auto", "bf16") and torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return torch.float16, True  # fp16 gradients underflow without loss scaling
    if requested == "bf16":  # CPU bf16 autocast only when asked: it is slower on most CPUs
        return torch.bfloat16, False
    return None, False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # all CUDA devices too


def capture_rng() -> dict[str, Any]:
    """Every RNG stream that training draws from, in a form torch.load(weights_only=True) accepts."""
    np_state: tuple[Any, ...] = np.random.get_state()  # type: ignore[assignment]  # legacy tuple
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    # Biases and norm weights (1-d) are not decayed, as in BERT's recipe and the HF Trainer.
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # Fused AdamW: one kernel over all tensors instead of one small op per tensor. On a 2-core
    # CPU it made the MiniLM step 82 ms -> 14 ms (bench/train_bench.py profile); CUDA likewise.
    return torch.optim.AdamW(groups, lr=config.learning_rate, fused=device.type in {"cuda", "cpu"})


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup_steps = math.ceil(config.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)  # never 0: the first step already learns
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if config.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        if config.lr_scheduler == "constant":
            return 1.0
        return max(0.0, 1.0 - progress)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_gradient_checkpointing(model: torch.nn.Module) -> bool:
    """Turn on activation checkpointing (transformers 5 name first); False if the model can't."""
    for name in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):
        enable = getattr(model, name, None)
        if callable(enable):
            try:
                enable()
            except ValueError:  # "X does not support activation checkpointing"
                return False
            return True
    return False


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB -> MiB


# --------------------------------------------------------------------------------------------
# The data order: length-grouped optimizer-step windows, a pure function of (seed, epoch)
# --------------------------------------------------------------------------------------------

def epoch_windows(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_windows: int = 50) -> list[list[int]]:
    """The optimizer-step windows of one epoch, as example indices.

    A seeded shuffle, then pools of `group_windows` windows sorted by length (longest first)
    and cut into windows, then the full windows shuffled (as HF's LengthGroupedSampler does).
    The one short window (the epoch's remainder) stays last. Resume relies on this being a
    pure function of its arguments."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    pool = batch_size * max(1, group_windows)
    windows: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool].tolist(), key=lambda i: -lengths[i])
        windows.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    short = [w for w in windows if len(w) < batch_size]
    full = [w for w in windows if len(w) == batch_size]
    return [full[i] for i in rng.permutation(len(full))] + short


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def total_optimizer_steps(config: TrainConfig, num_examples: int) -> int:
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * steps_per_epoch(num_examples, config.batch_size)))


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# The adaptive batch
# --------------------------------------------------------------------------------------------

_CPU_OOM = re.compile(r"out of memory|DefaultCPUAllocator: can't allocate memory", re.IGNORECASE)


def is_oom(error: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError is torch.OutOfMemoryError; the CPU allocator raises RuntimeError.
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and bool(_CPU_OOM.search(str(error)))


def free_memory(model: torch.nn.Module, device: torch.device) -> None:
    """After an OOM: drop the partial gradients and give cached blocks back to the allocator.
    Called outside the `except` block, once the traceback (and the tensors its frames hold) is gone."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def divisors_descending(n: int, limit: int) -> list[int]:
    return [d for d in range(min(n, limit), 0, -1) if n % d == 0]


def next_micro_batch(batch_size: int, micro: int) -> int | None:
    """The micro-batch after an OOM at `micro`: half of it (so accumulation doubles), or, when
    `micro` is odd, the largest divisor of the effective batch below it. None below 1."""
    if micro <= 1:
        return None
    if micro % 2 == 0:
        return micro // 2  # micro divides batch_size, so its half does too
    return divisors_descending(batch_size, micro - 1)[0]


def micro_batches(window: Sequence[int], micro: int) -> Iterator[tuple[list[int], bool]]:
    """The window's micro-batches, each with "is it the last one", the moment gradients sync.
    The last window of an epoch may be short: it simply has fewer micro-batches."""
    for start in range(0, len(window), micro):
        yield list(window[start:start + micro]), start + micro >= len(window)


@contextmanager
def accumulating(model: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Gradient accumulation's one hook: under DistributedDataParallel the gradients of all but
    the last micro-batch stay local (`no_sync`); a single process just accumulates into .grad."""
    no_sync = getattr(model, "no_sync", None)
    with (nullcontext() if sync or no_sync is None else no_sync()):
        yield


@dataclass
class Trainer:
    """The pieces every step needs, set up once by run_training."""

    task: TrainingTask
    config: TrainConfig
    sink: TrainingSink
    model: torch.nn.Module
    device: torch.device
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    state: LoopState

    def autocast(self) -> AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def forward_backward(self, examples: Sequence[Example], window: Sequence[int], window_units: int,
                         micro: int, step: int) -> torch.Tensor:
        """Accumulate the gradients of one optimizer step's window, micro-batch by micro-batch.
        Every micro-batch's summed loss is divided by the units of the WHOLE window, so the
        gradient is the window's mean whatever the split (32x1 == 8x4), short window included."""
        loss_sum = torch.zeros((), device=self.device)
        for indices, last in micro_batches(window, micro):
            faults.check_train_batch(len(indices), step, self.config.fault_oom_above_micro_batch,
                                     self.config.fault_oom_from_step)
            batch = to_device(self.task.collate([examples[i] for i in indices]), self.device)
            with accumulating(self.model, sync=last):
                with self.autocast():
                    micro_loss, _ = self.task.forward(self.model, batch)
                self.scaler.scale(micro_loss / window_units).backward()
            loss_sum += micro_loss.detach().float()
        return loss_sum / window_units

    def shrink_after_oom(self, step: int, seq_len: int, reason: str) -> None:
        """Split the micro-batch (accumulation doubles); at 1, gradient checkpointing; then give up."""
        state, batch_size = self.state, self.config.batch_size
        old = state.micro_batch_size
        new = next_micro_batch(batch_size, old)
        if new is not None:
            state.micro_batch_size = new
            self.sink.event(
                "oom_recovered",
                f"Out of memory at step {step} with micro-batch {old} x {batch_size // old}; "
                f"redoing the step with micro-batch {new} x {batch_size // new} "
                f"(effective batch still {batch_size}).",
                {"step": step, "old_micro_batch_size": old, "old_grad_accum_steps": batch_size // old,
                 "new_micro_batch_size": new, "new_grad_accum_steps": batch_size // new,
                 "sequence_length": seq_len, "error": reason[:500]},
            )
            return
        if not state.gradient_checkpointing and set_gradient_checkpointing(self.model):
            state.gradient_checkpointing = True
            self.sink.event(
                "gradient_checkpointing",
                f"Out of memory at step {step} even with micro-batch 1; turned on gradient "
                "checkpointing (slower, much less activation memory) and retrying.",
                {"step": step, "sequence_length": seq_len},
            )
            return
        raise TrainingError(
            f"Out of memory at step {step}: the model {self.task.model_name} does not fit on "
            f"{self.device} even one sample at a time at sequence length {seq_len} tokens"
            f"{' with gradient checkpointing' if state.gradient_checkpointing else ''}. "
            f"What would help: a shorter max_seq_length (now {self.config.max_seq_length}), a smaller "
            "base model, or a device with more memory. A smaller batch_size would not: the service "
            "already runs one sample per micro-batch."
        )

    def train_window(self, examples: Sequence[Example], window: Sequence[int], step: int) -> float:
        """forward_backward, redone on OOM from the same samples with a smaller micro-batch and
        the same RNG stream, until it fits. The optimizer, scheduler and step are not touched."""
        rng = capture_rng()
        seq_len = max(examples[i]["length"] for i in window)
        window_units = self.task.loss_units([examples[i] for i in window])
        while True:
            try:
                micro = self.state.micro_batch_size
                return float(self.forward_backward(examples, window, window_units, micro, step))
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not is_oom(error):
                    raise
                reason = str(error)
            # Outside the except block: the traceback's references to activations are released.
            free_memory(self.model, self.device)
            restore_rng(rng)
            self.shrink_after_oom(step, seq_len, reason)

    def probe(self, examples: Sequence[Example]) -> dict[str, Any]:
        """Pick the largest micro-batch dividing the effective batch that survives forward+backward
        on the job's longest examples. No optimizer step; gradients and RNG are put back."""
        config, state = self.config, self.state
        longest = sorted(range(len(examples)), key=lambda i: -examples[i]["length"])
        rng = capture_rng()
        peak_mb: float | None = None
        # On a GPU the first optimizer step allocates AdamW's two moment buffers (2x the trainable
        # weights): a placeholder that size is held during the probe, so the micro-batch it
        # picks still fits once that state exists. (On a CPU there is no budget to measure.)
        placeholder = None
        if self.device.type == "cuda":
            trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            placeholder = torch.empty(2 * trainable, dtype=torch.float32, device=self.device)
        try:
            for micro in divisors_descending(config.batch_size, config.max_micro_batch_size):
                state.micro_batch_size = micro
                window = longest[:micro]
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                fitted = True
                try:
                    units = self.task.loss_units([examples[i] for i in window])
                    self.forward_backward(examples, window, units, micro, step=0)
                except (torch.OutOfMemoryError, RuntimeError) as error:
                    if not is_oom(error):
                        raise
                    fitted = False
                free_memory(self.model, self.device)
                if fitted:
                    if self.device.type == "cuda":
                        peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
                    break
            else:
                # Even micro-batch 1 failed: the same path as mid-training (checkpointing, then an error).
                state.micro_batch_size = 1
                self.train_window(examples, longest[:1], step=0)
                free_memory(self.model, self.device)
        finally:
            del placeholder
            self.model.zero_grad(set_to_none=True)
            restore_rng(rng)
        seq_len = examples[longest[0]]["length"] if longest else 0
        return {"micro_batch_size": state.micro_batch_size,
                "grad_accum_steps": config.batch_size // state.micro_batch_size,
                "peak_memory_mb": peak_mb, "sequence_length": seq_len, "forced": False}

    def optimizer_step(self, optimizer: torch.optim.Optimizer,
                       scheduler: torch.optim.lr_scheduler.LRScheduler) -> float:
        """Clip, step, schedule, zero; returns the gradient norm before clipping."""
        self.scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        try:
            self.scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not is_oom(error):
                raise
            # Not a batch problem: the optimizer state itself does not fit beside the weights.
            raise TrainingError(
                f"Out of memory in the optimizer step: the model {self.task.model_name} and its AdamW "
                f"state (two extra copies of every trainable weight) do not fit on {self.device}. "
                "What would help: a smaller base model or a device with more memory; the batch size "
                "and max_seq_length do not change this memory."
            ) from error
        self.scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)


# --------------------------------------------------------------------------------------------
# Evaluate
# --------------------------------------------------------------------------------------------

def evaluate(trainer: Trainer) -> dict[str, Any]:
    """The task's metrics on the evaluation split plus the mean `loss`. An OOM here halves the
    evaluation batch only (the training micro-batch is a different budget: no gradients)."""
    task, model, state = trainer.task, trainer.model, trainer.state
    examples = task.eval_examples
    if not examples:
        return {}
    # Longest first: if a batch is going to run out of memory, it is the first one.
    order = sorted(range(len(examples)), key=lambda i: -examples[i]["length"])
    payloads: list[Any] = []
    loss_sum = torch.zeros((), device=trainer.device)
    units = 0
    model.eval()
    try:
        position = 0
        while position < len(order):
            size = state.eval_batch_size
            chunk = [examples[i] for i in order[position:position + size]]
            try:
                faults.check_eval_batch(len(chunk), trainer.config.fault_oom_above_eval_batch)
                batch = to_device(task.collate(chunk), trainer.device)
                with torch.no_grad(), trainer.autocast():
                    batch_loss, output = task.forward(model, batch)
                payloads.append(task.eval_payload(output, batch))
                loss_sum += batch_loss.float()
                units += task.loss_units(chunk)
                position += len(chunk)
                continue
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not is_oom(error):
                    raise
                reason = str(error)
            free_memory(model, trainer.device)
            if size == 1:
                raise TrainingError(
                    f"Out of memory while evaluating the model {task.model_name} one sample at a time "
                    f"on {trainer.device}. What would help: a shorter max_seq_length (now "
                    f"{trainer.config.max_seq_length}) or a smaller base model."
                )
            state.eval_batch_size = max(1, size // 2)
            trainer.sink.event(
                "eval_oom",
                f"Out of memory while evaluating with batch {size}; evaluating with batch "
                f"{state.eval_batch_size} (the training micro-batch is unchanged).",
                {"old_eval_batch_size": size, "new_eval_batch_size": state.eval_batch_size,
                 "error": reason[:500]},
            )
    finally:
        model.train()
    metrics = task.compute_metrics(payloads)
    metrics["loss"] = float(loss_sum) / max(1, units)
    return metrics


# --------------------------------------------------------------------------------------------
# Checkpoints: run_dir/checkpoints/step-<n>, written atomically; the best and the last k kept
# --------------------------------------------------------------------------------------------

def checkpoint_step(path: Path) -> int:
    return int(path.name.removeprefix(CHECKPOINT_PREFIX))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (atomic_dir's temporaries have another name)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name)
             and (p / TRAINING_STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def remove_stale_temporaries(root: Path) -> None:
    """Half-written directories of a worker killed mid-save."""
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".old-")):
                shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(trainer: Trainer, root: Path, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler) -> Path:
    path = root / f"{CHECKPOINT_PREFIX}{trainer.state.global_step}"
    with atomic_dir(path) as tmp:
        trainer.task.save_checkpoint(tmp)
        torch.save({
            "format": STATE_FORMAT,
            "config": asdict(trainer.config),
            "loop": asdict(trainer.state),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict(),
            "rng": capture_rng(),
        }, tmp / TRAINING_STATE_FILE)
    return path


def rotate_checkpoints(root: Path, keep_last: int, best_step: int | None, sink: TrainingSink) -> None:
    checkpoints = list_checkpoints(root)
    keep = set(checkpoints[-max(1, keep_last):])  # the latest is what a resume needs
    for path in checkpoints:
        if path not in keep and checkpoint_step(path) != best_step:
            shutil.rmtree(path, ignore_errors=True)
            sink.checkpoint_removed(path)


def load_training_state(path: Path) -> dict[str, Any] | None:
    state: dict[str, Any] = torch.load(path / TRAINING_STATE_FILE, map_location="cpu", weights_only=True)
    return state if state.get("format") == STATE_FORMAT else None


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------

def _improved(task: TrainingTask, metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if task.greater_is_better(metric) else value < best


def run_training(task: TrainingTask, config: TrainConfig, run_dir: Path, sink: TrainingSink) -> TrainResult:
    # ---- setup ----------------------------------------------------------------------------
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    if config.metric_for_best_model not in task.metric_names:
        raise TrainingError(
            f"metric_for_best_model {config.metric_for_best_model!r} is not a metric of this task; "
            f"choose one of {sorted(task.metric_names)}"
        )
    if not task.train_examples:
        raise TrainingError("The training split has no rows to train on.")
    checkpoints_root = Path(run_dir) / "checkpoints"
    remove_stale_temporaries(checkpoints_root)
    device = pick_device(config.device)
    autocast_dtype, use_scaler = pick_precision(config.precision, device)
    model = task.model.to(device)
    model.train()

    resume_from = next((p for p in reversed(list_checkpoints(checkpoints_root))
                        if load_training_state(p) is not None), None)
    saved = load_training_state(resume_from) if resume_from else None
    if saved is not None:
        config = config.with_job_fields_of(saved["config"])
    else:
        seed_everything(config.seed)

    examples = task.train_examples
    lengths = [int(e["length"]) for e in examples]
    per_epoch = steps_per_epoch(len(examples), config.batch_size)
    total_steps = total_optimizer_steps(config, len(examples))
    optimizer = build_optimizer(model, config, device)
    scheduler = build_scheduler(optimizer, config, total_steps)
    trainer = Trainer(task=task, config=config, sink=sink, model=model, device=device,
                      autocast_dtype=autocast_dtype, state=LoopState(),
                      scaler=torch.amp.GradScaler(device.type, enabled=use_scaler))
    state = trainer.state
    precision_name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype]
    if config.gradient_checkpointing:
        state.gradient_checkpointing = set_gradient_checkpointing(model)

    resumed_from_step: int | None = None
    if saved is not None and resume_from is not None:
        # Resume is a branch of setup: everything below continues as if never interrupted.
        task.load_checkpoint(resume_from)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        trainer.scaler.load_state_dict(saved["scaler"])
        trainer.state = state = LoopState(**saved["loop"])
        if state.gradient_checkpointing:
            set_gradient_checkpointing(model)
        restore_rng(saved["rng"])
        resumed_from_step = state.global_step
        sink.event("resumed", f"Resumed from the checkpoint at step {state.global_step} "
                   f"(epoch {state.global_step / per_epoch:.2f}) with micro-batch {state.micro_batch_size} x "
                   f"{config.batch_size // state.micro_batch_size}.",
                   {"step": state.global_step, "checkpoint": str(resume_from),
                    "micro_batch_size": state.micro_batch_size,
                    "grad_accum_steps": config.batch_size // state.micro_batch_size})
    else:
        if config.micro_batch_size is not None:
            state.micro_batch_size = config.micro_batch_size
            state.probe = {"micro_batch_size": config.micro_batch_size,
                           "grad_accum_steps": config.batch_size // config.micro_batch_size,
                           "peak_memory_mb": None, "sequence_length": max(lengths), "forced": True}
            how = "set by the job (no probe)"
        else:
            state.probe = trainer.probe(examples)
            how = f"probed at the longest sequence, {state.probe['sequence_length']} tokens"
        state.eval_batch_size = config.eval_batch_size or min(
            config.max_micro_batch_size, 2 * state.micro_batch_size)
        peak = state.probe["peak_memory_mb"]
        sink.event("batch_probe",
                   f"Micro-batch {state.micro_batch_size} x {config.batch_size // state.micro_batch_size} "
                   f"accumulation = effective batch {config.batch_size}, {how}"
                   f"{f', peak memory {peak:.0f} MiB' if peak is not None else ''}.",
                   dict(state.probe))
    sink.event("started", f"Training {task.model_name} on {device} ({precision_name}): "
               f"{len(examples)} examples, {total_steps} optimizer steps of {config.batch_size}.",
               {"device": str(device), "precision": precision_name, "total_steps": total_steps,
                "steps_per_epoch": per_epoch, "train_examples": len(examples),
                "eval_examples": len(task.eval_examples)})

    # ---- the loop -------------------------------------------------------------------------
    last_checkpoint = list_checkpoints(checkpoints_root)[-1] if resumed_from_step is not None else None
    cancelled = False
    window_cache: dict[int, list[list[int]]] = {}
    interval = {"loss": 0.0, "steps": 0, "samples": 0, "time_s": 0.0}
    # The train loss the fit diagnosis compares with: the mean since the last evaluation (a
    # checkpoint follows every evaluation, so a resumed run starts this afresh too).
    since_eval = {"loss": 0.0, "steps": 0}
    run_started = time.perf_counter()
    steps_this_run = 0

    def progress() -> None:
        elapsed = time.perf_counter() - run_started
        eta_s = elapsed / steps_this_run * (total_steps - state.global_step) if steps_this_run else None
        sink.progress(step=state.global_step, total_steps=total_steps,
                      epoch=state.global_step / per_epoch, micro_batch_size=state.micro_batch_size,
                      grad_accum_steps=config.batch_size // state.micro_batch_size,
                      eval_batch_size=state.eval_batch_size, eta_s=eta_s,
                      peak_memory_mb=peak_memory_mb(device), device=str(device),
                      best_metric_name=config.metric_for_best_model, best_metric=state.best_metric)

    if sink.should_stop():
        cancelled = True
    while not cancelled and not state.early_stopped and state.global_step < total_steps:
        epoch_index, index_in_epoch = divmod(state.global_step, per_epoch)
        if epoch_index not in window_cache:
            window_cache.clear()
            window_cache[epoch_index] = epoch_windows(lengths, config.batch_size, config.seed,
                                                      epoch_index, config.length_group_windows)
        window = window_cache[epoch_index][index_in_epoch]
        step = state.global_step + 1
        lr = scheduler.get_last_lr()[0]

        started = time.perf_counter()
        loss = trainer.train_window(examples, window, step)
        grad_norm = trainer.optimizer_step(optimizer, scheduler)
        faults.step_delay(config.fault_step_delay_s)
        state.global_step = step
        steps_this_run += 1
        took_s = time.perf_counter() - started
        epoch = step / per_epoch

        log.info("step %d/%d | epoch %.2f | loss %.4f | lr %.3e | %.1f samples/s | micro %d x %d",
                 step, total_steps, epoch, loss, lr, len(window) / took_s, state.micro_batch_size,
                 config.batch_size // state.micro_batch_size)
        interval["loss"] += loss
        since_eval["loss"] += loss
        since_eval["steps"] += 1
        interval["steps"] += 1
        interval["samples"] += len(window)
        interval["time_s"] += took_s
        last_step = step == total_steps
        if step % config.logging_steps == 0 or last_step:
            sink.train_point(step, epoch, {
                "loss": interval["loss"] / interval["steps"], "learning_rate": lr, "grad_norm": grad_norm,
                "samples_per_second": interval["samples"] / interval["time_s"],
                "micro_batch_size": state.micro_batch_size,
                "grad_accum_steps": config.batch_size // state.micro_batch_size,
            })
            interval = {"loss": 0.0, "steps": 0, "samples": 0, "time_s": 0.0}
        progress()
        if sink.should_stop():
            cancelled = True
            break

        due = (step % config.eval_steps == 0) if config.eval_strategy == "steps" and config.eval_steps \
            else step % per_epoch == 0
        if not (due or last_step):
            continue
        # ---- evaluate, checkpoint, early stopping -----------------------------------------
        metrics = evaluate(trainer)
        train_loss_for_fit = since_eval["loss"] / since_eval["steps"]
        since_eval = {"loss": 0.0, "steps": 0}
        if "loss" in metrics:
            metrics["fit"] = diagnose_fit(train_loss_for_fit, metrics["loss"], state.eval_losses,
                                          task.baseline_loss)
            metrics["train_loss"] = train_loss_for_fit
            state.eval_losses.append(metrics["loss"])
        sink.eval_point(step, epoch, metrics)
        value = metrics.get(config.metric_for_best_model)
        is_best = False
        if value is not None and _improved(task, config.metric_for_best_model, value, state.best_metric):
            is_best = True
            state.best_metric, state.best_step, state.best_metrics = float(value), step, metrics
            state.evals_without_improvement = 0
        elif value is not None:
            state.evals_without_improvement += 1
        state.last_metrics = metrics
        patience = config.early_stopping_patience
        state.early_stopped = patience is not None and state.evals_without_improvement >= patience \
            and not last_step
        last_checkpoint = save_checkpoint(trainer, checkpoints_root, optimizer, scheduler)
        sink.checkpoint_saved(step, epoch, metrics, last_checkpoint, is_best)
        rotate_checkpoints(checkpoints_root, config.keep_last_checkpoints, state.best_step, sink)
        log.info("eval at step %d: %s", step, {k: v for k, v in metrics.items() if isinstance(v, float)})
        if state.early_stopped:
            sink.event("early_stopped", f"Stopped early at step {step}: {config.metric_for_best_model} has "
                       f"not improved for {patience} evaluations (best {state.best_metric:.4f} at step "
                       f"{state.best_step}).", {"step": step, "best_step": state.best_step})
        progress()

    if cancelled:
        sink.event("cancelled", f"Stopped at step {state.global_step} of {total_steps} on request.",
                   {"step": state.global_step})
    else:
        sink.event("finished", f"Training finished at step {state.global_step}.",
                   {"step": state.global_step, "best_step": state.best_step})
    best = checkpoints_root / f"{CHECKPOINT_PREFIX}{state.best_step}" if state.best_step is not None else None
    return TrainResult(
        best_checkpoint=best if best is not None and best.is_dir() else None,
        last_checkpoint=last_checkpoint,
        final_metrics=state.last_metrics, best_metrics=state.best_metrics,
        global_step=state.global_step, cancelled=cancelled, early_stopped=state.early_stopped,
        resumed_from_step=resumed_from_step, micro_batch_size=state.micro_batch_size,
        grad_accum_steps=config.batch_size // state.micro_batch_size,
        eval_batch_size=state.eval_batch_size,
    )


# --------------------------------------------------------------------------------------------
# An in-memory sink: tests, benchmarks, and running the loop without a database
# --------------------------------------------------------------------------------------------

@dataclass
class RecordingSink:
    """Records everything; `stop_when(step)` makes should_stop() answer True (a cancel)."""

    stop_when: Callable[[int], bool] | None = None
    events: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    train_points: list[tuple[int, float, dict[str, Any]]] = field(default_factory=list)
    eval_points: list[tuple[int, float, dict[str, Any]]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    last_progress: dict[str, Any] = field(default_factory=dict)

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        log.info("event %s: %s", kind, message)
        self.events.append((kind, message, data))

    def train_point(self, step: int, epoch: float, values: dict[str, Any]) -> None:
        self.train_points.append((step, epoch, values))

    def eval_point(self, step: int, epoch: float, values: dict[str, Any]) -> None:
        self.eval_points.append((step, epoch, values))

    def checkpoint_saved(self, step: int, epoch: float, metrics: dict[str, Any], path: Path,
                         is_best: bool) -> None:
        self.checkpoints.append({"step": step, "epoch": epoch, "metrics": metrics, "path": path,
                                 "is_best": is_best})

    def checkpoint_removed(self, path: Path) -> None:
        self.removed.append(path)

    def progress(self, **fields: Any) -> None:
        self.last_progress = fields

    def should_stop(self) -> bool:
        return self.stop_when is not None and self.stop_when(self.last_progress.get("step", 0))

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [data or {} for k, _, data in self.events if k == kind]
