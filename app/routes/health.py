"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.deps import SessionDep
from app.queue import broker_reachable
from app.schemas.common import errors

router = APIRouter(tags=["health"])


@router.get("/healthz")
def read_healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None, responses=errors(503))
def read_readyz(session: SessionDep) -> dict[str, str] | JSONResponse:
    """The database and the broker are reachable; 503 with the reason otherwise."""
    problems: dict[str, str] = {}
    try:
        session.execute(text("SELECT 1"))
    except Exception as exc:
        problems["database"] = f"{type(exc).__name__}: {exc}"
    broker_problem = broker_reachable()
    if broker_problem:
        problems["broker"] = broker_problem
    if problems:
        return JSONResponse(status_code=503, content={"detail": problems})
    return {"status": "ready"}
