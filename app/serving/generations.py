"""The API's loaded chat models and the generation engine that decodes for all of them: /generate
(and /v1/chat/completions) serve from it, and deleting a model evicts the model's copy from it."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from core.settings import Settings, get_settings


class Generations:
    """Loaded chat models and the engine that decodes for all of them (made on the first request)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._models: Any = None  # core.serving.generation.ChatModels
        self._engine: Any = None  # core.serving.engine.Engine

    def models(self) -> Any:
        if self._models is None:
            from core.serving.generation import ChatModels  # torch is imported here, not at start

            self._models = ChatModels(self.settings.predict_device)  # where /predict serves, too
        return self._models

    def engine(self) -> Any:
        if self._engine is None:
            from core.serving.engine import Engine

            self._engine = Engine(self.settings)
        return self._engine

    def evict(self, model_id: str) -> None:
        if self._models is None:
            return
        runtime = self._models.cached(model_id)
        self._models.evict(model_id)
        unloaded = runtime is not None and runtime.base.path not in self._models.loaded_bases()
        if unloaded and self._engine is not None:
            self._engine.forget_base(runtime.base)  # its decoding thread ends once idle

    async def aclose(self) -> None:
        if self._engine is not None:
            await self._engine.aclose()


def checkpoint_runtime_id(job_id: str, step: int) -> str:
    """The loaded-runtime id of a chat job's checkpoint (served by /v1/chat/completions)."""
    return f"ckpt_{job_id}_step_{step}"


def generations(request: Request) -> Generations:
    """The app's Generations, made on first use."""
    found = getattr(request.app.state, "generations", None)
    if found is None:
        found = request.app.state.generations = Generations(get_settings())
    return found  # type: ignore[no-any-return]
