"""The training loop: task-agnostic, read top to bottom.

    setup (device, precision, seed, optimizer) -> resume, or probe the micro-batch
    -> for every optimizer step: train the window (adaptive batch), log, maybe evaluate,
       checkpoint and stop early -> the result.

What it is made of, one question per module:
    worker/protocols.py       what the loop talks to (TrainingTask, TrainingSink) and returns
    worker/config.py          TrainConfig (job + worker settings) and LoopState (checkpointed)
    worker/devices.py         device, precision, gradient checkpointing, peak memory
    worker/optim.py           AdamW and the learning-rate schedule
    worker/data_order.py      length-grouped optimizer-step windows, seeded per epoch
    worker/adaptive_batch.py  the probe, OOM split of the micro-batch, accumulation, the step
    worker/evaluation.py      the held-out split's loss and the task's metrics
    worker/checkpoints.py     atomic checkpoints, rotation, RNG capture for resume
    worker/recording.py       an in-memory sink for tests and benchmarks

The task (worker/families/: classification, chat) supplies the model, tokenized examples,
collation, the loss as (sum, units) and its metrics. This file knows nothing of labels or tokens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from worker import faults
from worker.adaptive_batch import Trainer
from worker.checkpoints import (
    CHECKPOINT_PREFIX,
    list_checkpoints,
    load_training_state,
    remove_stale_temporaries,
    restore_rng,
    rotate_checkpoints,
    save_checkpoint,
    seed_everything,
)
from worker.config import LoopState, TrainConfig
from worker.data_order import epoch_windows, steps_per_epoch, total_optimizer_steps
from worker.devices import peak_memory_mb, pick_device, pick_precision, set_gradient_checkpointing
from worker.evaluation import evaluate
from worker.fit import diagnose_fit
from worker.optim import build_optimizer, build_scheduler
from worker.protocols import Example, TrainingError, TrainingSink, TrainingTask, TrainResult

log = logging.getLogger("tuneserve.worker.loop")


def run_training(task: TrainingTask, config: TrainConfig, run_dir: Path, sink: TrainingSink) -> TrainResult:
    # ---- setup ----------------------------------------------------------------------------
    check_trainable(task, config)
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
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
    precision_name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype]
    if config.gradient_checkpointing:
        trainer.state.gradient_checkpointing = set_gradient_checkpointing(model)

    # Resume is a branch of setup: everything below continues as if never interrupted.
    resumed_from_step: int | None = None
    if saved is not None and resume_from is not None:
        resume(trainer, optimizer, scheduler, saved, resume_from, per_epoch)
        resumed_from_step = trainer.state.global_step
    else:
        choose_micro_batch(trainer, examples, lengths)
    state = trainer.state
    sink.event("started", f"Training {task.model_name} on {device} ({precision_name}): "
               f"{len(examples)} examples, {total_steps} optimizer steps of {config.batch_size}.",
               {"device": str(device), "precision": precision_name, "total_steps": total_steps,
                "steps_per_epoch": per_epoch, "train_examples": len(examples),
                "eval_examples": len(task.eval_examples)})

    # ---- the loop -------------------------------------------------------------------------
    last_checkpoint = list_checkpoints(checkpoints_root)[-1] if resumed_from_step is not None else None
    cancelled = False
    window_cache: dict[int, list[list[int]]] = {}
    # The train loss of the next train point, and the one the fit diagnosis compares with (the
    # mean since the last evaluation): both are carried by checkpoints, so a resume continues them.
    interval = TrainInterval(**state.train_interval)
    since_eval = TrainInterval(**state.since_eval)
    run_started = time.perf_counter()
    last_checkpoint_at = time.monotonic()
    steps_this_run = 0

    def checkpoint(step: int, epoch: float, metrics: dict[str, Any]) -> Path:
        """Save (atomically), record, rotate. Also what bounds the work a killed worker loses."""
        nonlocal last_checkpoint_at
        state.train_interval, state.since_eval = asdict(interval), asdict(since_eval)
        path = save_checkpoint(trainer, checkpoints_root, optimizer, scheduler)
        sink.checkpoint_saved(step, epoch, metrics, path, bool(metrics) and state.best_step == step)
        rotate_checkpoints(checkpoints_root, config.keep_last_checkpoints, state.best_step, sink)
        last_checkpoint_at = time.monotonic()
        return path

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

        # ---- one optimizer step over the window (the adaptive batch) ----------------------
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
        interval.add(loss, len(window), took_s)
        since_eval.add(loss, len(window), took_s)
        last_step = step == total_steps
        if step % config.logging_steps == 0 or last_step:
            sink.train_point(step, epoch, {
                "loss": interval.mean_loss, "learning_rate": lr, "grad_norm": grad_norm,
                "samples_per_second": interval.samples / interval.time_s,
                "micro_batch_size": state.micro_batch_size,
                "grad_accum_steps": config.batch_size // state.micro_batch_size,
            })
            interval = TrainInterval()
        progress()
        if sink.should_stop():
            cancelled = True
            # A cancel ends with a checkpoint where it stopped, so a resume continues from there;
            # a worker whose job was taken over writes nothing more (it is no longer its job).
            if not sink.lost_ownership():
                last_checkpoint = checkpoint(step, epoch, {})
            break

        epoch_end = step % per_epoch == 0
        due = (step % config.eval_steps == 0) if config.eval_strategy == "steps" and config.eval_steps \
            else epoch_end
        if not (due or last_step):
            # Between evaluations, a checkpoint at every epoch end and every checkpoint_interval_s.
            if epoch_end or time.monotonic() - last_checkpoint_at >= config.checkpoint_interval_s:
                last_checkpoint = checkpoint(step, epoch, {})
            continue
        # ---- evaluate, checkpoint, early stopping -----------------------------------------
        metrics = evaluate_step(trainer, since_eval.mean_loss, step, epoch, last_step)
        since_eval = TrainInterval()
        last_checkpoint = checkpoint(step, epoch, metrics)
        log.info("eval at step %d: %s", step, {k: v for k, v in metrics.items() if isinstance(v, float)})
        if state.early_stopped:
            sink.event("early_stopped", f"Stopped early at step {step}: {config.metric_for_best_model} has "
                       f"not improved for {config.early_stopping_patience} evaluations (best "
                       f"{state.best_metric:.4f} at step {state.best_step}).",
                       {"step": step, "best_step": state.best_step})
        progress()

    # ---- the result -----------------------------------------------------------------------
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
# The steps run_training names, in the order it calls them
# --------------------------------------------------------------------------------------------

def check_trainable(task: TrainingTask, config: TrainConfig) -> None:
    if config.metric_for_best_model not in task.metric_names:
        raise TrainingError(
            f"metric_for_best_model {config.metric_for_best_model!r} is not a metric of this task; "
            f"choose one of {sorted(task.metric_names)}"
        )
    if not task.train_examples:
        raise TrainingError("The training split has no rows to train on.")


def resume(trainer: Trainer, optimizer: torch.optim.Optimizer,
           scheduler: torch.optim.lr_scheduler.LRScheduler, saved: dict[str, Any], checkpoint: Path,
           per_epoch: int) -> None:
    """Put back the weights, optimizer, schedule, scaler, loop state and RNG of a checkpoint."""
    config = trainer.config
    trainer.task.load_checkpoint(checkpoint)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    trainer.scaler.load_state_dict(saved["scaler"])
    trainer.state = state = LoopState(**saved["loop"])
    if state.gradient_checkpointing:
        set_gradient_checkpointing(trainer.model)
    restore_rng(saved["rng"])
    trainer.sink.event(
        "resumed", f"Resumed from the checkpoint at step {state.global_step} "
        f"(epoch {state.global_step / per_epoch:.2f}) with micro-batch {state.micro_batch_size} x "
        f"{config.batch_size // state.micro_batch_size}.",
        {"step": state.global_step, "checkpoint": str(checkpoint),
         "micro_batch_size": state.micro_batch_size,
         "grad_accum_steps": config.batch_size // state.micro_batch_size})


def choose_micro_batch(trainer: Trainer, examples: Sequence[Example], lengths: Sequence[int]) -> None:
    """The job's forced micro-batch, or the probe's pick; the evaluation batch follows from it."""
    config, state = trainer.config, trainer.state
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
    trainer.sink.event(
        "batch_probe",
        f"Micro-batch {state.micro_batch_size} x {config.batch_size // state.micro_batch_size} "
        f"accumulation = effective batch {config.batch_size}, {how}"
        f"{f', peak memory {peak:.0f} MiB' if peak is not None else ''}.",
        dict(state.probe))


@dataclass
class TrainInterval:
    """Train losses summed since a mark (the last train point, or the last evaluation)."""

    loss: float = 0.0
    steps: int = 0
    samples: int = 0
    time_s: float = 0.0

    def add(self, loss: float, samples: int, time_s: float) -> None:
        self.loss += loss
        self.steps += 1
        self.samples += samples
        self.time_s += time_s

    @property
    def mean_loss(self) -> float:
        return self.loss / self.steps


def evaluate_step(trainer: Trainer, train_loss: float, step: int, epoch: float,
                  last_step: bool) -> dict[str, Any]:
    """Evaluate, diagnose the fit, record the point, and update the best and early stopping."""
    task, config, state, sink = trainer.task, trainer.config, trainer.state, trainer.sink
    metrics = evaluate(trainer)
    if "loss" in metrics:
        metrics["fit"] = diagnose_fit(train_loss, metrics["loss"], state.eval_losses, task.baseline_loss)
        metrics["train_loss"] = train_loss
        state.eval_losses.append(metrics["loss"])
    sink.eval_point(step, epoch, metrics)
    value = metrics.get(config.metric_for_best_model)
    if value is not None and _improved(task, config.metric_for_best_model, value, state.best_metric):
        state.best_metric, state.best_step, state.best_metrics = float(value), step, metrics
        state.evals_without_improvement = 0
    elif value is not None:
        state.evals_without_improvement += 1
    state.last_metrics = metrics
    patience = config.early_stopping_patience
    state.early_stopped = patience is not None and state.evals_without_improvement >= patience \
        and not last_step
    return metrics


def _improved(task: TrainingTask, metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if task.greater_is_better(metric) else value < best
