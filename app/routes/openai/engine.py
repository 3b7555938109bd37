"""The one place the /v1 routes reach the generation engine: the very path POST /generate takes
(app/routes/generate.py's loaded models and concurrency count, core/serving/generation.py's
ChatRuntime). When the engine changes, this file is what changes for /v1.

What OpenAI's API asks for beyond /generate's knobs is done here, on top of the engine: `n`
choices are n generations; `seed` seeds torch's generator before each (seed + choice index), so
the same request gives the same replies when nothing else generates at the same moment; `stop`
strings cut the reply where the first one begins (finish_reason "stop").
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from app.routes.generate import Generations, generations
from app.routes.openai.errors import OpenAIError


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float
    top_p: float
    stops: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


class Slot:
    """One of TUNESERVE_GENERATE_MAX_CONCURRENT generations, shared with /generate."""

    def __init__(self, gens: Generations) -> None:
        self.gens, self.held = gens, False

    def __enter__(self) -> Slot:
        limit = self.gens.settings.generate_max_concurrent
        if self.gens.running >= limit:
            raise OpenAIError(429, f"{self.gens.running} generations are running, the limit is {limit} "
                                   "(TUNESERVE_GENERATE_MAX_CONCURRENT); retry shortly",
                              headers={"Retry-After": "2"})
        self.gens.running += 1  # on the event loop's thread: no lock needed
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            self.held = False
            self.gens.running -= 1

    def __exit__(self, *exc: object) -> None:
        self.release()


def engine(request: Request) -> Generations:
    return generations(request)


async def load(gens: Generations, model_id: str, path: Path) -> Any:
    """The model's runtime (loaded on its first request)."""
    from core.serving.generation import read_spec

    if not path.is_dir():
        raise OpenAIError(409, f"The files of model {model_id!r} are missing; it cannot be served.",
                          param="model")
    return await run_in_threadpool(lambda: gens.models().runtime(read_spec(model_id, path)))


async def prompt_ids(runtime: Any, messages: list[dict[str, str]]) -> list[int]:
    return await run_in_threadpool(runtime.prompt_ids, messages)


def _seed(seed: int | None) -> None:
    if seed is not None:
        import torch

        torch.manual_seed(seed)


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """(the text before the first stop string, whether one occurred)."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:at], True) if at >= 0 else (text, False)


def complete(runtime: Any, ids: list[int], sampling: Sampling, index: int = 0) -> Completion:
    """One reply (blocking: run it in a thread)."""
    _seed(None if sampling.seed is None else sampling.seed + index)
    reply = runtime.generate(ids, sampling.max_new_tokens, sampling.temperature, sampling.top_p)
    text, stopped = cut_at_stop(reply.text, sampling.stops)
    return Completion(text=text, prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                      finish_reason="stop" if stopped else reply.finish_reason)


class Stream:
    """One reply as text pieces (blocking iteration: next() it in a thread), stop strings held back
    until they can no longer begin in what is pending. `result` is complete once it is exhausted."""

    def __init__(self, runtime: Any, ids: list[int], sampling: Sampling, index: int = 0) -> None:
        _seed(None if sampling.seed is None else sampling.seed + index)
        self.sampling = sampling
        pieces, thread, result = runtime.stream(ids, sampling.max_new_tokens, sampling.temperature,
                                                sampling.top_p)
        self._pieces: Iterator[str] = pieces
        self._thread: threading.Thread = thread
        self.result: dict[str, Any] = result
        self.stopped = False

    def __iter__(self) -> Iterator[str]:
        stops = self.sampling.stops
        hold = max((len(s) for s in stops), default=1) - 1
        pending = ""
        for piece in self._pieces:
            if self.stopped:
                continue  # drain: the generating thread ends on its own (max tokens or EOS)
            pending += piece
            text, self.stopped = cut_at_stop(pending, stops)
            if self.stopped:
                if text:
                    yield text
                pending = ""
                continue
            ready = len(pending) - hold
            if ready > 0:
                yield pending[:ready]
                pending = pending[ready:]
        if pending and not self.stopped:
            yield pending
        self._thread.join()
        if self.stopped:
            self.result["finish_reason"] = "stop"
