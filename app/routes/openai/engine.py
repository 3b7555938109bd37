"""The one place the /v1 routes reach the generation engine: the very path POST /generate takes
(app/routes/generate.py's `submit`: the loaded models, the prompt-length check, the engine's
queue with its 429), so /v1/chat/completions and /generate share one batch per base model.

What OpenAI's API asks for beyond /generate's knobs is done here: `n` choices are n sequences
submitted together (they decode in one batch), choice i sampling with `seed + i`; `stop`
strings and seeds are the engine's own, per sequence.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request

from app.routes.generate import submit
from app.routes.openai.errors import OpenAIError
from app.serving.generations import Generations, generations

if TYPE_CHECKING:  # the engine imports torch: the API loads it on the first reply, not at start
    from core.serving.engine import GenerationParams


def engine(request: Request) -> Generations:
    return generations(request)


def params(max_new_tokens: int, temperature: float, top_p: float, stops: list[str],
           seed: int | None) -> GenerationParams:
    from core.serving.engine import GenerationParams

    return GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            stop=tuple(stops), seed=seed)


async def start(gens: Generations, model_id: str, path: Path, messages: list[dict[str, str]],
                sampling: GenerationParams, n: int) -> list[Any]:
    """n streams of the reply (core.serving.engine.Stream), queued on the engine together. The
    native 409/422/429 become OpenAI's error object (a long prompt: context_length_exceeded)."""
    from core.serving.engine import GenerationParams

    streams: list[Any] = []
    try:
        for index in range(n):
            seeded = sampling if sampling.seed is None else GenerationParams(
                **{**sampling.__dict__, "seed": sampling.seed + index})
            streams.append(await submit(gens, model_id, path, messages, seeded))
    except HTTPException as error:
        for stream in streams:
            stream.cancel()
        code = "context_length_exceeded" if error.status_code == 422 else None
        raise OpenAIError(400 if error.status_code == 422 else error.status_code, str(error.detail),
                          param="messages" if code else "model" if error.status_code == 409 else None,
                          code=code, headers=dict(error.headers or {})) from None
    return streams
