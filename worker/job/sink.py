"""The training loop's sink over SQL: every event, metric point and checkpoint becomes a row as
it happens, so the API shows a live run and nothing is lost when the process dies."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core.db import session_scope, write_with_retry
from core.events import add_event, json_safe
from core.jobstate import JobState
from core.tables import Checkpoint, Job, MetricPoint
from worker.job.claim import LeaseKeeper
from worker.job.search import Trial
from worker.job.stop import stop_requested
from worker.job.tensorboard import TensorBoardLog

log = logging.getLogger("tuneserve.worker.job.sink")

# Job columns the loop's progress() may set.
_PROGRESS_FIELDS = {
    "step", "total_steps", "epoch", "micro_batch_size", "grad_accum_steps", "eval_batch_size",
    "eta_s", "peak_memory_mb", "device", "best_metric_name", "best_metric", "progress",
}


class SqlSink:
    def __init__(self, job_id: str, lease: LeaseKeeper, min_progress_interval_s: float = 1.0,
                 tensorboard_dir: Path | None = None, cancel_check_interval_s: float = 0.0,
                 earlier_attempts: bool = False) -> None:
        self.job_id = job_id
        # An earlier attempt may have written points: this one replaces them from wherever it
        # starts, a checkpoint's step ("resumed") or the very start (no checkpoint yet).
        self.earlier_attempts = earlier_attempts
        self._resumed = False
        self.lease = lease
        self.min_progress_interval_s = min_progress_interval_s
        self.cancel_check_interval_s = cancel_check_interval_s
        self._last_cancel_check = -math.inf
        # -inf, not 0: time.monotonic() counts from boot, so 0 would hold back the first write
        # on a machine up for less than min_progress_interval_s.
        self._last_progress_write = -math.inf
        # Metric points are also written as TensorBoard scalars when a directory is given.
        self.tensorboard = TensorBoardLog(tensorboard_dir) if tensorboard_dir is not None else None
        self._last_values: dict[str, Any] = {}
        # A search experiment's trial: its evaluations go to the study, which may prune it.
        self.trial = Trial.of_job(job_id)

    def event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        log.info("job %s: %s: %s", self.job_id, kind, message)
        add_event(self.job_id, kind, message, data)
        if kind == "lr_range_test" and data and "chosen" in data:
            chosen = float(data["chosen"])
            write_with_retry(lambda session: session.execute(
                update(Job).where(Job.id == self.job_id).values(chosen_learning_rate=chosen)),
                what=f"job {self.job_id}: chosen learning rate")
        if kind == "resumed" and data and "step" in data:
            self._resumed = True
            self._rewind_to(int(data["step"]))
        elif kind == "started" and self.earlier_attempts and not self._resumed:
            self._resumed = True
            self._rewind_to(0)
            add_event(self.job_id, "restarted", "Training starts from the start: no checkpoint was written "
                      "yet. What an earlier attempt recorded is replaced step by step.", {"step": 0})

    def _rewind_to(self, step: int) -> None:
        """A resumed attempt redoes the steps after its checkpoint: the points (and checkpoint
        rows) the lost attempt wrote past it are replaced, not shown twice."""
        def write(session: Session) -> None:
            session.execute(delete(MetricPoint).where(
                MetricPoint.job_id == self.job_id, MetricPoint.kind.in_(("train", "eval")),
                MetricPoint.step > step))
            session.execute(delete(Checkpoint).where(Checkpoint.job_id == self.job_id,
                                                     Checkpoint.step > step))

        write_with_retry(write, what=f"job {self.job_id}: rewind to step {step}")
        if self.tensorboard is not None:
            self.tensorboard.resumed_at(step)

    def _point(self, kind: str, step: int, epoch: float, values: dict[str, Any]) -> None:
        values = json_safe(values)
        write_with_retry(lambda session: session.add(MetricPoint(
            job_id=self.job_id, kind=kind, step=step, epoch=float(epoch), values=values)),
            what=f"job {self.job_id}: {kind} point")
        if self.tensorboard is not None:
            self.tensorboard.scalars(kind, step, {**values, "epoch": epoch})

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    def train_point(self, step: int, epoch: float, values: dict[str, Any]) -> None:
        self._point("train", step, epoch, values)

    def eval_point(self, step: int, epoch: float, values: dict[str, Any]) -> None:
        self._point("eval", step, epoch, values)
        if self.trial is not None:
            pruned = self.trial.report(step, values)
            if pruned:
                self.event("pruned", pruned, {"step": step, "trial": self.trial.number})

    def checkpoint_saved(self, step: int, epoch: float, metrics: dict[str, Any], path: Path,
                         is_best: bool) -> None:
        def write(session: Session) -> None:
            if is_best:
                session.execute(update(Checkpoint).where(Checkpoint.job_id == self.job_id)
                                .values(is_best=False))
            session.add(Checkpoint(job_id=self.job_id, step=step, epoch=float(epoch),
                                   metrics=json_safe(metrics), path=str(path), is_best=is_best))

        write_with_retry(write, what=f"job {self.job_id}: checkpoint row")

    def checkpoint_removed(self, path: Path) -> None:
        write_with_retry(lambda session: session.execute(
            update(Checkpoint).where(Checkpoint.job_id == self.job_id, Checkpoint.path == str(path))
            .values(available=False)), what=f"job {self.job_id}: checkpoint pruned")

    def progress(self, **fields: Any) -> None:
        values = {k: json_safe(v) for k, v in fields.items() if k in _PROGRESS_FIELDS}
        total, step = values.get("total_steps"), values.get("step")
        if "progress" not in values and total and step is not None:
            values["progress"] = min(1.0, step / total)
        self._last_values = values
        now = time.monotonic()
        # Throttled: one UPDATE per second at most, but never skip the final step's figures.
        if now - self._last_progress_write < self.min_progress_interval_s and step != total:
            return
        self._last_progress_write = now
        write_with_retry(lambda session: session.execute(
            update(Job).where(Job.id == self.job_id, Job.state == JobState.RUNNING).values(**values)),
            what=f"job {self.job_id}: progress")

    def last_progress(self) -> dict[str, Any]:
        """The latest progress figures, written or not (the task writes them with the outcome)."""
        return dict(self._last_values)

    def lost_ownership(self) -> bool:
        return self.lease.lease_lost.is_set()

    def should_stop(self) -> bool:
        """Asked by the loop after every optimizer step. A cancel is read from the job row here
        (one primary-key read, well under a millisecond next to a step's tens of milliseconds
        at least), so it is seen at the next step, not at the next heartbeat."""
        if self.lease.cancel_requested.is_set() or self.lease.lease_lost.is_set() or stop_requested():
            return True
        if self.trial is not None and self.trial.pruned:
            return True
        now = time.monotonic()
        if now - self._last_cancel_check < self.cancel_check_interval_s:
            return False
        self._last_cancel_check = now
        try:
            with session_scope() as session:
                cancel = session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id))
        except Exception:  # a database hiccup must not stop training; the heartbeat sees it too
            log.warning("job %s: reading the cancel flag failed", self.job_id, exc_info=True)
            return False
        if cancel:
            self.lease.cancel_requested.set()
        return bool(cancel)
