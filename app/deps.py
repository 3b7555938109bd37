"""FastAPI dependencies as Annotated aliases: a route's signature says what it needs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from app.auth import LOCAL_ADMIN, Principal, verify_key
from app.removal import Removal
from app.serving.generations import Generations, generations
from app.serving.predictor import Predictor
from core.db import new_session
from core.settings import Settings, get_settings


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
# The loaded chat models: /generate serves from them, a deleted model leaves them.
GenerationsDep = Annotated[Generations, Depends(generations)]


def get_removal(session: SessionDep, settings: SettingsDep, predictor: PredictorDep,
                generations: GenerationsDep) -> Removal:
    return Removal(session, settings, predictor, generations)


# Deleting jobs and models, over the request's own session (FastAPI hands the route the same one).
RemovalDep = Annotated[Removal, Depends(get_removal)]


def _lookup_key(presented: str) -> Principal | None:
    with new_session() as session:
        row = verify_key(session, presented=presented)
    return Principal(tenant_id=row.id, is_admin=row.is_admin, name=row.name) if row is not None else None


async def get_principal(request: Request) -> Principal:
    """The caller. With TUNESERVE_AUTH off (embedded single-user mode) everyone is the local
    admin; on, `Authorization: Bearer <key>` is required (401 otherwise). Async, so the
    auth-off path costs no thread hop; FastAPI caches it per request."""
    if not get_settings().auth:
        return LOCAL_ADMIN
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    principal = None
    if scheme.lower() == "bearer" and presented.strip():
        principal = await run_in_threadpool(_lookup_key, presented.strip())
    if principal is None:
        raise HTTPException(
            401,
            "a valid API key is required: send `Authorization: Bearer <key>`; "
            "an operator makes one with `tuneserve keys create --name <you>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
# For a router whose routes need a key but not the caller: APIRouter(dependencies=[Authenticated]).
Authenticated = Depends(get_principal)
