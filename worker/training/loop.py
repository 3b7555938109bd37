"""The training loop: family-agnostic, read top to bottom.

    setup (device, precision, seed, optimizer) -> resume, or choose the micro-batch
    -> for every optimizer step: train the window (micro-batches), log, maybe evaluate,
       checkpoint and stop early -> the result.

What it is made of, one question per module of worker/training/:
    protocols.py    what the loop talks to (TrainingTask, TrainingSink) and returns
    config.py       TrainConfig (job + worker settings) and LoopState (checkpointed)
    devices.py      device, precision, gradient checkpointing, peak memory, what an OOM is
    optim.py        AdamW and the learning-rate schedule
    data_order.py   the job's data_order as optimizer-step windows, seeded per epoch
    micro_batch.py  where the micro-batch is chosen and changed, accumulation, the optimizer step
    evaluation.py   the held-out split's loss and the task's metrics
    checkpoints.py  atomic checkpoints, rotation, resume
    rng.py          the RNG streams a checkpoint carries
    recording.py    an in-memory sink for tests and benchmarks

The task (worker/families/<name>/) supplies the model, tokenized examples, collation, the loss as
(sum, units) and its metrics. This file knows nothing of labels or tokens.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from worker.training import faults, lr_range
from worker.training.checkpoints import (
    CHECKPOINT_PREFIX,
    newest_resumable,
    remove_stale_temporaries,
    restore,
    rotate_checkpoints,
    save_checkpoint,
)
from worker.training.config import LoopState, TrainConfig
from worker.training.data_order import epoch_windows, steps_per_epoch, total_optimizer_steps
from worker.training.devices import peak_memory_mb, pick_device, pick_precision, set_gradient_checkpointing
from worker.training.evaluation import evaluate
from worker.training.fit import diagnose_fit
from worker.training.micro_batch import Trainer
from worker.training.optim import build_optimizer, build_scheduler
from worker.training.protocols import TrainingError, TrainingSink, TrainingTask, TrainResult
from worker.training.rng import seed_everything

log = logging.getLogger("tuneserve.worker.training.loop")


def run_training(task: TrainingTask, config: TrainConfig, run_dir: Path, sink: TrainingSink) -> TrainResult:
    trainer, run = setup(task, config, Path(run_dir) / "checkpoints", sink)
    config, state, examples = trainer.config, trainer.state, task.train_examples
    stopped = sink.should_stop()
    while not stopped and not state.early_stopped and state.global_step < run.total_steps:
        step = state.global_step + 1
        window = run.window(step)
        lr = float(trainer.scheduler.get_last_lr()[0])

        # ---- one optimizer step over the window, micro-batch by micro-batch ---------------
        started = time.perf_counter()
        loss, counts = trainer.train_window(examples, window, step)
        grad_norm = trainer.optimizer_step()
        faults.step_delay(config.fault_step_delay_s)
        state.global_step = step
        run.record_step(step, loss, counts, lr, grad_norm, len(window), time.perf_counter() - started)

        if sink.lost_ownership():
            stopped = True  # the job was taken over: this attempt writes nothing more
            break
        saved = True
        if run.eval_due(step):
            # ---- evaluate, checkpoint, early stopping -------------------------------------
            metrics = evaluate_step(trainer, run.since_eval, step, run.epoch(step),
                                    last_step=step == run.total_steps)
            run.since_eval = TrainInterval()
            run.checkpoint(step, metrics)
            if state.early_stopped:
                sink.event("early_stopped", f"Stopped early at step {step}: {config.metric_for_best_model} "
                           f"has not improved for {config.early_stopping_patience} evaluations (best "
                           f"{state.best_metric:.4f} at step {state.best_step}).",
                           {"step": step, "best_step": state.best_step})
            run.report_progress()
        elif run.checkpoint_due(step):
            run.checkpoint(step, {})
        else:
            saved = False
        if step < run.total_steps and sink.should_stop():
            # A cancel or a worker's stop ends with a checkpoint where it stopped (after this
            # step's evaluation, if one was due), so a resume continues from exactly there.
            stopped = True
            if not saved:
                run.checkpoint(step, {})
    return finish(trainer, run, stopped)


# --------------------------------------------------------------------------------------------
# The steps run_training names, in the order it calls them
# --------------------------------------------------------------------------------------------

def setup(task: TrainingTask, config: TrainConfig, checkpoints_root: Path,
          sink: TrainingSink) -> tuple[Trainer, Run]:
    """Device, precision, optimizer and schedule; then resume from the newest checkpoint (a branch
    of setup: everything after continues as if never interrupted), or seed and pick a micro-batch."""
    check_trainable(task, config)
    if config.torch_threads > 0:
        torch.set_num_threads(config.torch_threads)
    remove_stale_temporaries(checkpoints_root)
    device = pick_device(config.device)
    autocast_dtype, use_scaler = pick_precision(config.precision, device)
    model = task.model.to(device)
    model.train()
    resumable = newest_resumable(checkpoints_root)
    if resumable is not None:
        config = config.with_job_fields_of(resumable[1]["config"])
    else:
        seed_everything(config.seed)

    examples = task.train_examples
    per_epoch = steps_per_epoch(len(examples), config.batch_size)
    total_steps = total_optimizer_steps(config, len(examples))
    auto_lr = config.learning_rate == "auto" and resumable is None  # a resume keeps its chosen rate
    optimizer = build_optimizer(model, config, device, lr=lr_range.LR_START if auto_lr else None)
    trainer = Trainer(task=task, config=config, sink=sink, model=model, device=device,
                      autocast_dtype=autocast_dtype, state=LoopState(),
                      scaler=torch.amp.GradScaler(device.type, enabled=use_scaler), optimizer=optimizer,
                      scheduler=build_scheduler(optimizer, config, total_steps))
    if config.gradient_checkpointing:
        trainer.state.gradient_checkpointing = set_gradient_checkpointing(model)
    if resumable is not None:
        restore(trainer, resumable[1], resumable[0], per_epoch)
    else:
        trainer.choose_micro_batch(examples)
        if auto_lr:
            choose_learning_rate(trainer, total_steps, len(examples))

    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[autocast_dtype]
    sink.event("started", f"Training {task.model_name} on {device} ({precision}): {len(examples)} "
               f"examples, {total_steps} optimizer steps of {config.batch_size}.",
               {"device": str(device), "precision": precision, "total_steps": total_steps,
                "steps_per_epoch": per_epoch, "train_examples": len(examples),
                "eval_examples": len(task.eval_examples)})
    run = Run(trainer=trainer, checkpoints_root=checkpoints_root, per_epoch=per_epoch,
              total_steps=total_steps,
              lengths=[int(e["length"]) for e in examples],
              resumed_from_step=trainer.state.global_step if resumable is not None else None,
              last_checkpoint=resumable[0] if resumable is not None else None)
    return trainer, run


def choose_learning_rate(trainer: Trainer, total_steps: int, train_rows: int) -> None:
    """learning_rate "auto": the range test at the chosen micro-batch, then the optimizer and the
    schedule rebuilt at the rate it picked (the test's own optimizer is thrown away)."""
    # What the job trains on: the cost of the test is bounded by a share of it.
    job_samples = min(total_steps * trainer.config.batch_size,
                      math.ceil(total_steps / max(1, steps_per_epoch(train_rows, trainer.config.batch_size)))
                      * train_rows)
    test = lr_range.run(trainer, job_samples)
    trainer.config = dataclasses.replace(trainer.config, learning_rate=test.chosen)
    trainer.optimizer = build_optimizer(trainer.model, trainer.config, trainer.device)
    trainer.scheduler = build_scheduler(trainer.optimizer, trainer.config, total_steps)
    blew_up = (f"; the loss blew up at {test.diverged_at:.2e}" if test.diverged_at is not None
               else "")
    trainer.sink.event(
        "lr_range_test",
        f"Learning rate {test.chosen:.2e} chosen by a range test ({len(test.lrs)} micro-batches, "
        f"{test.lrs[0]:.0e} to {test.lrs[-1]:.2e}{blew_up}; rule {test.rule}) in {test.seconds:.1f} s.",
        test.as_event_data())


def check_trainable(task: TrainingTask, config: TrainConfig) -> None:
    if config.metric_for_best_model not in task.metric_names:
        raise TrainingError(
            f"metric_for_best_model {config.metric_for_best_model!r} is not a metric of this task; "
            f"choose one of {sorted(task.metric_names)}"
        )
    if not task.train_examples:
        raise TrainingError("The training split has no rows to train on.")


@dataclass
class TrainInterval:
    """Train losses (and the task's train counts) summed since a mark (the last train point, or
    the last evaluation)."""

    loss: float = 0.0
    steps: int = 0
    samples: int = 0
    time_s: float = 0.0
    counts: dict[str, float] = field(default_factory=dict)

    def add(self, loss: float, counts: dict[str, float], samples: int, time_s: float) -> None:
        self.loss += loss
        self.steps += 1
        self.samples += samples
        self.time_s += time_s
        for name, value in counts.items():
            self.counts[name] = self.counts.get(name, 0.0) + value

    @property
    def mean_loss(self) -> float:
        return self.loss / self.steps


@dataclass
class Run:
    """What the loop keeps between optimizer steps beside the checkpointed LoopState: the data
    order of the current epoch, the loss intervals, and when it last checkpointed."""

    trainer: Trainer
    checkpoints_root: Path
    per_epoch: int
    total_steps: int
    lengths: list[int]
    resumed_from_step: int | None
    last_checkpoint: Path | None
    steps_this_run: int = 0
    started_at: float = field(default_factory=time.perf_counter)
    last_checkpoint_at: float = field(default_factory=time.monotonic)
    _epoch_index: int = -1
    _windows: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Both intervals are carried by checkpoints, so a resume continues them exactly.
        state = self.trainer.state
        self.interval = TrainInterval(**state.train_interval)     # until the next train point
        self.since_eval = TrainInterval(**state.since_eval)       # the fit diagnosis' train loss

    def epoch(self, step: int) -> float:
        return step / self.per_epoch

    def window(self, step: int) -> list[int]:
        """The example indices of optimizer step `step` (1-based): a pure function of seed and epoch."""
        epoch_index, index_in_epoch = divmod(step - 1, self.per_epoch)
        if epoch_index != self._epoch_index:
            config = self.trainer.config
            self._windows = epoch_windows(self.lengths, config.batch_size, config.seed, epoch_index,
                                          config.data_order)
            self._epoch_index = epoch_index
        return self._windows[index_in_epoch]

    def record_step(self, step: int, loss: float, counts: dict[str, float], lr: float, grad_norm: float,
                    samples: int, took_s: float) -> None:
        """The step's log line, its train point every logging_steps, and the job's progress."""
        trainer, state = self.trainer, self.trainer.state
        self.steps_this_run += 1
        log.info("step %d/%d | epoch %.2f | loss %.4f | lr %.3e | %.1f samples/s | micro %d x %d", step,
                 self.total_steps, self.epoch(step), loss, lr, samples / took_s, state.micro_batch_size,
                 trainer.grad_accum_steps)
        self.interval.add(loss, counts, samples, took_s)
        self.since_eval.add(loss, counts, samples, took_s)
        if step % trainer.config.logging_steps == 0 or step == self.total_steps:
            trainer.sink.train_point(step, self.epoch(step), {
                "loss": self.interval.mean_loss, **trainer.task.train_metrics(self.interval.counts),
                "learning_rate": lr, "grad_norm": grad_norm,
                "samples_per_second": self.interval.samples / self.interval.time_s,
                "micro_batch_size": state.micro_batch_size, "grad_accum_steps": trainer.grad_accum_steps,
            })
            self.interval = TrainInterval()
        self.report_progress()

    def report_progress(self) -> None:
        trainer, state = self.trainer, self.trainer.state
        elapsed = time.perf_counter() - self.started_at
        remaining = self.total_steps - state.global_step
        trainer.sink.progress(
            step=state.global_step, total_steps=self.total_steps, epoch=self.epoch(state.global_step),
            micro_batch_size=state.micro_batch_size, grad_accum_steps=trainer.grad_accum_steps,
            eval_batch_size=state.eval_batch_size,
            eta_s=elapsed / self.steps_this_run * remaining if self.steps_this_run else None,
            peak_memory_mb=peak_memory_mb(trainer.device), device=str(trainer.device),
            best_metric_name=trainer.config.metric_for_best_model, best_metric=state.best_metric)

    def eval_due(self, step: int) -> bool:
        config = self.trainer.config
        if step == self.total_steps:
            return True
        if config.eval_strategy == "steps" and config.eval_steps:
            return step % config.eval_steps == 0
        return step % self.per_epoch == 0

    def checkpoint_due(self, step: int) -> bool:
        """Between evaluations: at every epoch end and every checkpoint_interval_s."""
        interval_s = self.trainer.config.checkpoint_interval_s
        return step % self.per_epoch == 0 or time.monotonic() - self.last_checkpoint_at >= interval_s

    def checkpoint(self, step: int, metrics: dict[str, Any]) -> None:
        """Save (atomically), record, rotate. Also what bounds the work a killed worker loses."""
        trainer, state = self.trainer, self.trainer.state
        state.train_interval, state.since_eval = asdict(self.interval), asdict(self.since_eval)
        path = save_checkpoint(trainer, self.checkpoints_root)
        trainer.sink.checkpoint_saved(step, self.epoch(step), metrics, path,
                                      bool(metrics) and state.best_step == step)
        rotate_checkpoints(self.checkpoints_root, trainer.config.keep_last_checkpoints, state.best_step,
                           trainer.sink)
        self.last_checkpoint, self.last_checkpoint_at = path, time.monotonic()


def evaluate_step(trainer: Trainer, since_eval: TrainInterval, step: int, epoch: float,
                  last_step: bool) -> dict[str, Any]:
    """Evaluate, diagnose the fit, record the point, and update the best and early stopping.
    The train figures since the last evaluation go with it as train_loss, train_<metric>."""
    task, config, state, sink = trainer.task, trainer.config, trainer.state, trainer.sink
    metrics = evaluate(trainer)
    if "loss" in metrics:
        train_loss = since_eval.mean_loss
        metrics["fit"] = diagnose_fit(train_loss, metrics["loss"], state.eval_losses, task.baseline_loss)
        metrics["train_loss"] = train_loss
        train_figures = task.train_metrics(since_eval.counts)
        metrics.update({f"train_{name}": value for name, value in train_figures.items()})
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


def finish(trainer: Trainer, run: Run, stopped: bool) -> TrainResult:
    state, sink = trainer.state, trainer.sink
    if stopped:
        sink.event("cancelled", f"Stopped at step {state.global_step} of {run.total_steps} on request.",
                   {"step": state.global_step})
    else:
        sink.event("finished", f"Training finished at step {state.global_step}.",
                   {"step": state.global_step, "best_step": state.best_step})
    best = run.checkpoints_root / f"{CHECKPOINT_PREFIX}{state.best_step}" if state.best_step is not None \
        else None
    return TrainResult(
        best_checkpoint=best if best is not None and best.is_dir() else None,
        last_checkpoint=run.last_checkpoint,
        final_metrics=state.last_metrics, best_metrics=state.best_metrics,
        global_step=state.global_step, cancelled=stopped, early_stopped=state.early_stopped,
        resumed_from_step=run.resumed_from_step, micro_batch_size=state.micro_batch_size,
        grad_accum_steps=trainer.grad_accum_steps, eval_batch_size=state.eval_batch_size,
    )
