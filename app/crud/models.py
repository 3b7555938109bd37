"""Data access for tuned models. Keyword-only, rows or None, no HTTP."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import Principal
from core.jobstate import ACTIVE_STATES
from core.tables import Job, TunedModel


def get_model(*, session: Session, model_id: str) -> TunedModel | None:
    return session.get(TunedModel, model_id)


def list_models(*, session: Session, principal: Principal, skip: int = 0,
                limit: int = 100) -> tuple[Sequence[TunedModel], int]:
    """The caller's models (an admin's: all), newest first, and the total count."""
    query = principal.scope(select(TunedModel), TunedModel)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(TunedModel.created_at.desc(), TunedModel.id).offset(skip).limit(limit)
    ).all()
    return rows, count


def active_jobs_from_model(*, session: Session, model_id: str) -> Sequence[Job]:
    """Queued or running jobs that continue training from this model."""
    return session.scalars(
        select(Job)
        .where(Job.base_model_id == model_id, Job.state.in_(ACTIVE_STATES))
        .order_by(Job.created_at)
    ).all()


def delete_model(*, session: Session, model: TunedModel) -> None:
    session.delete(model)
    session.commit()
