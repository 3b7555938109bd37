"""The SQL sink on a real migrated database (SQLite and PostgreSQL): events, metric points and
checkpoint rows as the loop reports them, the rewind when a resumed attempt redoes steps, the
throttled progress row, and the stop signals the loop polls."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import select

from core.db import session_scope
from core.jobstate import JobState
from core.tables import Checkpoint, Job, JobEvent, MetricPoint
from worker.job.claim import LeaseKeeper
from worker.job.sink import SqlSink


def _running_job(**fields: Any) -> str:
    with session_scope() as session:
        job = Job(base_model="m", task="single_label", state=JobState.RUNNING, worker="w", **fields)
        session.add(job)
        session.flush()
        return job.id


def _sink(job_id: str, **options: Any) -> SqlSink:
    # The lease keeper's thread is not started: these tests drive its two signals by hand.
    return SqlSink(job_id, LeaseKeeper(job_id, "w", interval_s=60), **options)


def _points(job_id: str) -> list[tuple[str, int, dict[str, Any]]]:
    with session_scope() as session:
        rows = session.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id)
                               .order_by(MetricPoint.kind, MetricPoint.step, MetricPoint.id))
        return [(p.kind, p.step, p.values) for p in rows]


def _checkpoints(job_id: str) -> list[tuple[int, bool, bool]]:
    with session_scope() as session:
        rows = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                               .order_by(Checkpoint.step, Checkpoint.created_at))
        return [(c.step, c.is_best, c.available) for c in rows]


def _job(job_id: str) -> Job:
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_events_are_rows_with_json_safe_data(settings: Any) -> None:
    job_id = _running_job()
    sink = _sink(job_id)
    sink.event("started", "Training on cpu.", {"loss": math.nan, "best": math.inf, "steps": np.int64(5),
                                                "lr": torch.tensor(0.5), "nested": {"x": [1.0, -math.inf]}})
    sink.event("note", "No data.")
    with session_scope() as session:
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)
                                 .order_by(JobEvent.id)).all()
        # NaN and infinities are not JSON (PostgreSQL refuses them): they are stored as null;
        # numpy and torch scalars as plain numbers.
        assert [(e.kind, e.message, e.data) for e in events] == [
            ("started", "Training on cpu.", {"loss": None, "best": None, "steps": 5, "lr": 0.5,
                                             "nested": {"x": [1.0, None]}}),
            ("note", "No data.", None),
        ]


def test_train_and_eval_points_are_rows_per_step(settings: Any) -> None:
    job_id = _running_job()
    other = _running_job()
    sink = _sink(job_id)
    sink.train_point(1, 0.5, {"loss": 0.9, "learning_rate": 1e-3})
    sink.train_point(2, 1.0, {"loss": math.nan})
    sink.eval_point(2, 1.0, {"loss": 0.7, "f1_macro": np.float32(0.25), "per_class": {"a": {"f1": 0.25}}})
    _sink(other).train_point(1, 0.5, {"loss": 5.0})
    assert _points(job_id) == [
        ("eval", 2, {"loss": 0.7, "f1_macro": 0.25, "per_class": {"a": {"f1": 0.25}}}),
        ("train", 1, {"loss": 0.9, "learning_rate": 1e-3}),
        ("train", 2, {"loss": None}),
    ]
    with session_scope() as session:
        epochs = session.scalars(select(MetricPoint.epoch).where(MetricPoint.job_id == job_id,
                                                                 MetricPoint.kind == "train")
                                 .order_by(MetricPoint.step)).all()
    assert list(epochs) == [0.5, 1.0]


def test_a_new_best_checkpoint_takes_the_mark_from_the_old_one(settings: Any, tmp_path: Path) -> None:
    job_id = _running_job()
    sink = _sink(job_id)
    sink.checkpoint_saved(3, 1.0, {"f1_macro": 0.5}, tmp_path / "step-3", is_best=True)
    sink.checkpoint_saved(4, 1.3, {}, tmp_path / "step-4", is_best=False)  # a timed one
    assert _checkpoints(job_id) == [(3, True, True), (4, False, True)]
    sink.checkpoint_saved(6, 2.0, {"f1_macro": 0.8}, tmp_path / "step-6", is_best=True)
    assert _checkpoints(job_id) == [(3, False, True), (4, False, True), (6, True, True)]

    # Pruned from disk: the row stays, with its metrics, marked unavailable; only that one.
    sink.checkpoint_removed(tmp_path / "step-3")
    assert _checkpoints(job_id) == [(3, False, False), (4, False, True), (6, True, True)]
    with session_scope() as session:
        row = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id,
                                                       Checkpoint.step == 3)).one()
        assert (row.metrics, row.path, row.epoch) == ({"f1_macro": 0.5}, str(tmp_path / "step-3"), 1.0)


def test_resume_rewinds_what_the_lost_attempt_wrote_past_its_checkpoint(settings: Any,
                                                                         tmp_path: Path) -> None:
    job_id = _running_job()
    other = _running_job()
    lost = _sink(job_id)
    for step in range(1, 7):
        lost.train_point(step, step / 3, {"loss": 1.0})
    lost.eval_point(3, 1.0, {"f1_macro": 0.5})
    lost.eval_point(6, 2.0, {"f1_macro": 0.6})
    lost.checkpoint_saved(3, 1.0, {"f1_macro": 0.5}, tmp_path / "step-3", is_best=True)
    lost.checkpoint_saved(5, 1.7, {}, tmp_path / "step-5", is_best=False)
    lost.checkpoint_saved(6, 2.0, {"f1_macro": 0.6}, tmp_path / "step-6", is_best=True)
    _sink(other).train_point(5, 1.0, {"loss": 2.0})
    # The attempt that wrote step 6 died before step 6's checkpoint reached the disk: the next
    # one resumes from step 5 and redoes step 6.
    resumed = _sink(job_id)
    resumed.event("resumed", "Resumed from the checkpoint at step 5.", {"step": 5})
    assert [(kind, step) for kind, step, _ in _points(job_id)] == [
        ("eval", 3), *[("train", s) for s in range(1, 6)]]
    assert _checkpoints(job_id) == [(3, False, True), (5, False, True)]
    assert [step for _, step, _ in _points(other)] == [5]  # another job's rows are its own

    resumed.train_point(6, 2.0, {"loss": 0.5})
    resumed.eval_point(6, 2.0, {"f1_macro": 0.7})
    resumed.checkpoint_saved(6, 2.0, {"f1_macro": 0.7}, tmp_path / "step-6", is_best=True)
    points = _points(job_id)
    assert [(kind, step) for kind, step, _ in points] == [
        ("eval", 3), ("eval", 6), *[("train", s) for s in range(1, 7)]]
    assert points[-1][2] == {"loss": 0.5}  # the redone step, not the lost one
    assert _checkpoints(job_id) == [(3, False, True), (5, False, True), (6, True, True)]


def test_other_events_rewind_nothing(settings: Any, tmp_path: Path) -> None:
    job_id = _running_job()
    sink = _sink(job_id)
    sink.train_point(4, 1.0, {"loss": 1.0})
    sink.checkpoint_saved(4, 1.0, {}, tmp_path / "step-4", is_best=False)
    sink.event("attempt", "Another worker took over.", {"step": 1})
    sink.event("resumed", "Resumed, with no step recorded.")
    assert [step for _, step, _ in _points(job_id)] == [4]
    assert _checkpoints(job_id) == [(4, False, True)]


def test_progress_is_throttled_but_the_last_step_is_always_written(settings: Any) -> None:
    job_id = _running_job()
    sink = _sink(job_id, min_progress_interval_s=3600)
    sink.progress(step=1, total_steps=10, epoch=0.1, micro_batch_size=8, device="cpu", unknown_field=1)
    job = _job(job_id)
    assert (job.step, job.total_steps, job.progress, job.micro_batch_size, job.device) == (
        1, 10, 0.1, 8, "cpu")
    sink.progress(step=5, total_steps=10, epoch=0.5)
    assert _job(job_id).step == 1  # within the interval: held back...
    assert sink.last_progress() == {"step": 5, "total_steps": 10, "epoch": 0.5, "progress": 0.5}
    sink.progress(step=10, total_steps=10, epoch=1.0, best_metric=math.nan)
    job = _job(job_id)  # ...but never the final step's figures
    assert (job.step, job.progress, job.epoch, job.best_metric) == (10, 1.0, 1.0, None)


def test_progress_leaves_a_job_that_is_no_longer_running_alone(settings: Any) -> None:
    job_id = _running_job()
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state = JobState.CANCELLED
    _sink(job_id, min_progress_interval_s=0).progress(step=3, total_steps=10)
    job = _job(job_id)
    assert (job.state, job.step, job.progress) == (JobState.CANCELLED, 0, 0.0)


def test_should_stop_reads_the_cancel_flag_from_the_row(settings: Any) -> None:
    job_id = _running_job()
    sink = _sink(job_id)
    assert not sink.should_stop()
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.cancel_requested = True
    assert sink.should_stop()
    assert sink.lease.cancel_requested.is_set()  # remembered: no more reads needed
    assert not sink.lost_ownership()


def test_should_stop_reads_the_row_at_most_once_per_interval(settings: Any) -> None:
    job_id = _running_job()
    sink = _sink(job_id, cancel_check_interval_s=3600)
    assert not sink.should_stop()  # the first call reads the row
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.cancel_requested = True
    assert not sink.should_stop()  # not read again within the interval
    sink.lease.cancel_requested.set()  # the heartbeat saw it
    assert sink.should_stop()


def test_a_lost_lease_stops_the_loop(settings: Any) -> None:
    job_id = _running_job()
    sink = _sink(job_id)
    sink.lease.lease_lost.set()
    assert sink.should_stop() and sink.lost_ownership()


def test_the_range_tests_choice_is_the_jobs_chosen_learning_rate(settings: Any) -> None:
    job_id = _running_job()
    assert _job(job_id).chosen_learning_rate is None
    _sink(job_id).event("lr_range_test", "Learning rate 3.00e-04 chosen.",
                        {"lrs": [1e-7, 1e-3], "losses": [1.1, 0.9], "chosen": 3e-4, "rule": "minimum/10"})
    assert _job(job_id).chosen_learning_rate == 3e-4
