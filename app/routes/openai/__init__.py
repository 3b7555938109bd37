"""The OpenAI-compatible API under /v1: files, fine-tuning jobs, chat completions and models,
answering OpenAI's objects and errors, over tuneserve's own rows and generation engine."""

from __future__ import annotations

from fastapi import FastAPI

from app.routes.openai import chat, errors, files, fine_tuning, models

ROUTERS = (files.router, fine_tuning.router, chat.router, models.router)


def mount(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router)


def install_errors(app: FastAPI) -> None:
    errors.install(app)
