"""The API's loaded chat models and the count of generations running: /generate serves from it,
and deleting a model evicts the model's copy from it."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from core.settings import Settings, get_settings


class Generations:
    """Loaded chat models and the count of generations running (all models together)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.running = 0
        self._models: Any = None  # core.serving.generation.ChatModels, made on the first request

    def models(self) -> Any:
        if self._models is None:
            from core.serving.generation import ChatModels  # torch is imported here, not at start

            self._models = ChatModels(self.settings.predict_device)  # where /predict serves, too
        return self._models

    def evict(self, model_id: str) -> None:
        if self._models is not None:
            self._models.evict(model_id)


def generations(request: Request) -> Generations:
    """The app's Generations, made on first use."""
    found = getattr(request.app.state, "generations", None)
    if found is None:
        found = request.app.state.generations = Generations(get_settings())
    return found  # type: ignore[no-any-return]
