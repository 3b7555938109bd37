"""Data access for jobs, their events, metric points and checkpoints. No HTTP here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import Principal
from core.jobstate import ACTIVE_STATES
from core.tables import Checkpoint, Job, JobEvent, MetricPoint


def get_job(session: Session, *, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(
    session: Session, *, principal: Principal, state: str | None = None, dataset_id: str | None = None,
    experiment_id: str | None = None, limit: int = 100, offset: int = 0,
) -> tuple[Sequence[Job], int]:
    query = principal.scope(select(Job), Job)
    if state:
        query = query.where(Job.state == state)
    if dataset_id:
        query = query.where(Job.dataset_id == dataset_id)
    if experiment_id:
        query = query.where(Job.experiment_id == experiment_id)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Job.created_at.desc()).limit(limit).offset(offset)).all()
    return rows, count


def count_active_jobs(session: Session, *, tenant_id: str | None) -> int:
    """Queued and running jobs of one key (the per-key concurrency limit counts these)."""
    return session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.state.in_(ACTIVE_STATES))) or 0


def create_job(session: Session, *, values: dict[str, Any]) -> Job:
    job = Job(**values)
    session.add(job)
    session.flush()
    session.add(JobEvent(job_id=job.id, kind="queued", message="Job queued; waiting for a worker."))
    return job


def add_event(session: Session, *, job_id: str, kind: str, message: str) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, message=message))


def list_events(session: Session, *, job_id: str, since_id: int = 0) -> Sequence[JobEvent]:
    return session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > since_id)
                           .order_by(JobEvent.id)).all()


def list_metric_points(
    session: Session, *, job_id: str, kind: str | None = None, since_step: int | None = None
) -> Sequence[MetricPoint]:
    query = select(MetricPoint).where(MetricPoint.job_id == job_id)
    if kind:
        query = query.where(MetricPoint.kind == kind)
    if since_step is not None:
        query = query.where(MetricPoint.step > since_step)
    return session.scalars(query.order_by(MetricPoint.step, MetricPoint.id)).all()


def list_checkpoints(session: Session, *, job_id: str) -> Sequence[Checkpoint]:
    return session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)
                           .order_by(Checkpoint.step, Checkpoint.created_at)).all()


def jobs_using_model(session: Session, *, model_id: str) -> Sequence[Job]:
    return session.scalars(select(Job).where(Job.base_model_id == model_id,
                                             Job.state.in_(ACTIVE_STATES))).all()


def delete_job(session: Session, *, job: Job) -> None:
    """The row; its events, metric points and checkpoint rows go with it (ON DELETE CASCADE)."""
    session.delete(job)
    session.flush()


def active_job_ids_using(session: Session, *, dataset_id: str) -> list[str]:
    return list(session.scalars(select(Job.id).where(Job.dataset_id == dataset_id,
                                                     Job.state.in_(ACTIVE_STATES))
                                .order_by(Job.created_at)))
