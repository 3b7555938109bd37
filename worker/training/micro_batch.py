"""The micro-batch: the one place it is chosen (the probe, or the job's forced value) and changed
(the OOM split that redoes a step with a smaller one), where gradient accumulation is derived
from it, and the optimizer step.

The effective batch (`batch_size`) is the job's; the micro-batch is the service's choice, and
every split of a window gives the same gradient (the loss is divided by the window's units).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from worker.training import faults
from worker.training.config import LoopState, TrainConfig
from worker.training.devices import free_memory, is_oom, set_gradient_checkpointing, to_device
from worker.training.protocols import Example, TrainingError, TrainingSink, TrainingTask
from worker.training.rng import capture_rng, restore_rng


def accumulation_steps(batch_size: int, micro_batch_size: int) -> int:
    return batch_size // micro_batch_size  # the micro-batch always divides the effective batch


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
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    @property
    def grad_accum_steps(self) -> int:
        """Micro-batches per optimizer step: the one place accumulation is derived."""
        return accumulation_steps(self.config.batch_size, self.state.micro_batch_size)

    def autocast(self) -> AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def forward_backward(self, examples: Sequence[Example], window: Sequence[int], window_units: int,
                         micro: int, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Accumulate the gradients of one optimizer step's window, micro-batch by micro-batch.
        Every micro-batch's summed loss is divided by the units of the WHOLE window, so the
        gradient is the window's mean whatever the split (32x1 == 8x4), short window included.
        Returns the window's mean loss and the task's train counts summed over the window."""
        loss_sum = torch.zeros((), device=self.device)
        counts: dict[str, torch.Tensor] = {}
        for indices, last in micro_batches(window, micro):
            faults.check_train_batch(len(indices), step, self.config.fault_oom_above_micro_batch,
                                     self.config.fault_oom_from_step)
            batch = to_device(self.task.collate([examples[i] for i in indices]), self.device)
            with accumulating(self.model, sync=last):
                with self.autocast():
                    micro_loss, output = self.task.forward(self.model, batch)
                self.scaler.scale(micro_loss / window_units).backward()
            loss_sum += micro_loss.detach().float()
            for name, value in self.task.train_counts(output).items():
                counts[name] = counts[name] + value if name in counts else value
            del output  # a classification output holds the graph's logits
        return loss_sum / window_units, counts

    def shrink_after_oom(self, step: int, seq_len: int, reason: str) -> None:
        """Split the micro-batch (accumulation doubles); at 1, gradient checkpointing; then give up."""
        state, batch_size = self.state, self.config.batch_size
        old = state.micro_batch_size
        new = next_micro_batch(batch_size, old)
        if new is not None:
            state.micro_batch_size = new
            self.sink.event(
                "oom_recovered",
                f"Out of memory at step {step} with micro-batch {old} x "
                f"{accumulation_steps(batch_size, old)}; "
                f"redoing the step with micro-batch {new} x {accumulation_steps(batch_size, new)} "
                f"(effective batch still {batch_size}).",
                {"step": step, "old_micro_batch_size": old,
                 "old_grad_accum_steps": accumulation_steps(batch_size, old),
                 "new_micro_batch_size": new, "new_grad_accum_steps": accumulation_steps(batch_size, new),
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
            + (f" The memory plan made before loading: {self.config.memory_plan_message}"
               if self.config.memory_plan_message else ""),
            kind="environment",
        )

    def train_window(self, examples: Sequence[Example], window: Sequence[int],
                     step: int) -> tuple[float, dict[str, float]]:
        """forward_backward, redone on OOM from the same samples with a smaller micro-batch and
        the same RNG stream, until it fits. The optimizer, scheduler and step are not touched.
        Returns the window's mean loss and its train counts, as numbers (one sync a step)."""
        rng = capture_rng()
        seq_len = max(examples[i]["length"] for i in window)
        window_units = self.task.loss_units([examples[i] for i in window])
        while True:
            try:
                micro = self.state.micro_batch_size
                loss, counts = self.forward_backward(examples, window, window_units, micro, step)
                return float(loss), {name: float(value) for name, value in counts.items()}
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
        return {"micro_batch_size": state.micro_batch_size, "grad_accum_steps": self.grad_accum_steps,
                "peak_memory_mb": peak_mb, "sequence_length": seq_len, "forced": False}

    def choose_micro_batch(self, examples: Sequence[Example]) -> None:
        """The job's forced micro-batch, or the probe's pick; the evaluation batch follows from it."""
        config, state = self.config, self.state
        lengths = [int(e["length"]) for e in examples]
        if config.micro_batch_size is not None:
            state.micro_batch_size = config.micro_batch_size
            state.probe = {"micro_batch_size": config.micro_batch_size,
                           "grad_accum_steps": self.grad_accum_steps,
                           "peak_memory_mb": None, "sequence_length": max(lengths), "forced": True}
            how = "set by the job (no probe)"
        else:
            state.probe = self.probe(examples)
            how = f"probed at the longest sequence, {state.probe['sequence_length']} tokens"
        state.eval_batch_size = config.eval_batch_size or min(
            config.max_micro_batch_size, 2 * state.micro_batch_size)
        peak = state.probe["peak_memory_mb"]
        self.sink.event(
            "batch_probe",
            f"Micro-batch {state.micro_batch_size} x {self.grad_accum_steps} accumulation = effective "
            f"batch {config.batch_size}, {how}{f', peak memory {peak:.0f} MiB' if peak is not None else ''}.",
            dict(state.probe))

    def optimizer_step(self) -> float:
        """Clip, step, schedule, zero; returns the gradient norm before clipping."""
        optimizer, scheduler = self.optimizer, self.scheduler
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
                "and max_seq_length do not change this memory.",
                kind="environment",
            ) from error
        self.scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)
