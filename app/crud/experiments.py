"""Data access for experiments and the rows their leaderboard is made of. No HTTP here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import Principal
from core.tables import Experiment, Job, JobEvent, MetricPoint


def create_experiment(session: Session, *, values: dict[str, Any]) -> Experiment:
    experiment = Experiment(**values)
    session.add(experiment)
    session.flush()
    return experiment


def get_experiment(session: Session, *, experiment_id: str) -> Experiment | None:
    return session.get(Experiment, experiment_id)


def list_experiments(session: Session, *, principal: Principal, dataset_id: str | None = None,
                     limit: int = 100, offset: int = 0) -> tuple[Sequence[Experiment], int]:
    """The caller's experiments (an admin's: all), newest first, with the total count."""
    query = principal.scope(select(Experiment), Experiment)
    if dataset_id:
        query = query.where(Experiment.dataset_id == dataset_id)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    query = query.order_by(Experiment.created_at.desc(), Experiment.id.desc()).limit(limit).offset(offset)
    return session.scalars(query).all(), count


def jobs_of(session: Session, *, experiments: Sequence[Experiment]) -> dict[str, list[Job]]:
    """Each experiment's jobs that still exist, in the order of its base_models."""
    out: dict[str, list[Job]] = {e.id: [] for e in experiments}
    if not experiments:
        return out
    rows = session.scalars(select(Job).where(Job.experiment_id.in_(list(out)))).all()
    order = {job_id: i for e in experiments for i, job_id in enumerate(e.job_ids)}
    for job in sorted(rows, key=lambda j: (order.get(j.id, len(order)), j.created_at)):
        out[str(job.experiment_id)].append(job)
    return out


def metric_points_of(session: Session, *, job_ids: Sequence[str]) -> list[MetricPoint]:
    """Train and eval points of these jobs (throughput and the fit diagnosis come from them)."""
    if not job_ids:
        return []
    return list(session.scalars(select(MetricPoint).where(
        MetricPoint.job_id.in_(list(job_ids)), MetricPoint.kind.in_(("train", "eval")))
        .order_by(MetricPoint.job_id, MetricPoint.step, MetricPoint.id)).all())


def training_events_of(session: Session, *, job_ids: Sequence[str]) -> list[JobEvent]:
    """When each job's training loop started and finished (its training time)."""
    if not job_ids:
        return []
    return list(session.scalars(select(JobEvent).where(
        JobEvent.job_id.in_(list(job_ids)), JobEvent.kind.in_(("started", "finished")))
        .order_by(JobEvent.id)).all())


def delete_experiment(session: Session, *, experiment: Experiment) -> None:
    """The experiment row only: its jobs go first, through the job deletion path."""
    session.delete(experiment)
    session.flush()
