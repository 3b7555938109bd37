"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text

from app.deps import SessionDep
from app.schemas.common import errors
from core.queue import broker_reachable

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


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}})
def read_metrics() -> PlainTextResponse:
    """Prometheus metrics: requests, latency, jobs by state, queue depth, training and /predict
    figures, model cache, disk used by jobs. No key needed: figures only, no ids or names."""
    return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
