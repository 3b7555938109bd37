"""Data access for datasets. No HTTP here: functions return rows or None."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.auth import Principal
from core.tables import Dataset


def create_dataset(session: Session, *, values: dict[str, Any]) -> Dataset:
    dataset = Dataset(**values)
    session.add(dataset)
    session.flush()
    return dataset


def get_dataset(session: Session, *, dataset_id: str) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def list_datasets(session: Session, *, principal: Principal, limit: int = 100,
                  offset: int = 0) -> tuple[Sequence[Dataset], int]:
    """The caller's datasets (an admin's: all), newest first, with the total count."""
    query = principal.scope(select(Dataset), Dataset)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    query = query.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit).offset(offset)
    return session.scalars(query).all(), count


def find_by_sha256(session: Session, *, sha256: str, principal: Principal) -> Dataset | None:
    """The earliest dataset this caller can see that was uploaded with exactly these bytes."""
    query = principal.scope(select(Dataset), Dataset).where(Dataset.sha256 == sha256)
    return session.scalars(query.order_by(Dataset.created_at).limit(1)).first()


def delete_dataset(session: Session, *, dataset: Dataset) -> None:
    session.delete(dataset)
    session.flush()
