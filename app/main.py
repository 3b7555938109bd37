"""The FastAPI application: `uvicorn app.main:app` starts it with nothing else configured."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import dashboard
from app.errors import install_error_handlers
from app.limits import RequestBodyLimit
from app.methods import MethodsAllowed
from app.openapi import install_documented_limits
from app.routes import (
    datasets,
    events,
    experiments,
    generate,
    health,
    jobs,
    models,
    openai,
    plan,
    predict,
    predict_file,
)
from app.serving.predictor import Predictor
from app.telemetry import RequestMetrics
from core.logging import demote_polling, quiet_libraries
from core.settings import Settings, get_settings

log = logging.getLogger("tuneserve.api")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    settings.ensure_dirs()
    if settings.auto_migrate:
        from app.migrate import upgrade_head

        upgrade_head(settings.database_url)
        log.info("database schema is at head (%s)", settings.database_url.split("@")[-1])
    _sweep_orphans(settings)
    app.state.predictor = Predictor(settings)  # cheap: torch is imported on the first load
    try:
        yield
    finally:
        await app.state.predictor.aclose()
        generations = getattr(app.state, "generations", None)
        if generations is not None:
            await generations.aclose()  # the decoding threads end with the app


def _sweep_orphans(settings: Settings) -> None:
    """Files a killed process left behind go at start; a failure here must not stop the API."""
    from app.janitor import sweep_orphans
    from core.db import new_session

    try:
        with new_session() as session:
            sweep_orphans(settings, session)
    except Exception:
        log.warning("the sweep for orphaned files failed; the API starts anyway", exc_info=True)


def create_app() -> FastAPI:
    quiet_libraries()
    demote_polling()
    app = FastAPI(title="tuneserve", version="0.1.0", lifespan=lifespan)
    for module in (health, datasets, jobs, events, models, predict, predict_file, experiments, generate,
                   plan):
        app.include_router(module.router)
    openai.mount(app)  # /v1: OpenAI's API over the same rows
    dashboard.mount(app)
    app.add_middleware(RequestBodyLimit)
    app.add_middleware(MethodsAllowed, routes=app.router.routes)
    # Added last, so it runs first: it sees the 413s and 401s the others answer too.
    app.add_middleware(RequestMetrics)
    install_error_handlers(app)
    install_documented_limits(app)
    openai.install_errors(app)  # after the native handlers: /v1 answers OpenAI's error object
    return app


app = create_app()
