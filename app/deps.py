"""FastAPI dependencies as Annotated aliases: a route's signature says what it needs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.db import new_session
from app.serving.predictor import Predictor
from app.settings import Settings, get_settings


def get_session() -> Iterator[Session]:
    session = new_session()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_predictor(request: Request) -> Predictor:
    """The app's Predictor (made in the lifespan; made here when no lifespan ran). Async, so
    FastAPI calls it on the event loop, not through a thread hop on every /predict."""
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is None:
        predictor = request.app.state.predictor = Predictor(get_settings())
    return predictor  # type: ignore[no-any-return]


PredictorDep = Annotated[Predictor, Depends(get_predictor)]
