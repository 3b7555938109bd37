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


def principal_of_key(session: Session, presented: str) -> Principal | None:
    """The caller that `presented` (a key, as sent) is, read now: a revoked key is None at once."""
    row = verify_key(session, presented=presented)
    return Principal(tenant_id=row.id, is_admin=row.is_admin, name=row.name) if row is not None else None


def _lookup_key(presented: str) -> Principal | None:
    with new_session() as session:
        return principal_of_key(session, presented)


def unauthorized() -> HTTPException:
    return HTTPException(
        401,
        "a valid API key is required: send `Authorization: Bearer <key>`; "
        "an operator makes one with `tuneserve keys create --name <you>`",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def get_presented_key(request: Request) -> str | None:
    """The key the caller sent, not yet checked against the database (None: TUNESERVE_AUTH is
    off, and the caller is the local admin). A request without a bearer key is a 401 here. For a
    hot route that reads its own rows in one thread hop anyway: it checks the key with
    `principal_of_key` in that same session, rather than paying get_principal's hop first."""
    if not get_settings().auth:
        return None
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise unauthorized()
    return presented.strip()


async def get_principal(request: Request) -> Principal:
    """The caller. With TUNESERVE_AUTH off (embedded single-user mode) everyone is the local
    admin; on, `Authorization: Bearer <key>` is required (401 otherwise). Async, so the
    auth-off path costs no thread hop; FastAPI caches it per request."""
    presented = await get_presented_key(request)
    if presented is None:
        return LOCAL_ADMIN
    principal = await run_in_threadpool(_lookup_key, presented)
    if principal is None:
        raise unauthorized()
    request.state.principal = principal
    return principal


# The caller's key as sent, checked by the route itself (see get_presented_key).
PresentedKeyDep = Annotated[str | None, Depends(get_presented_key)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
# For a router whose routes need a key but not the caller: APIRouter(dependencies=[Authenticated]).
Authenticated = Depends(get_principal)
