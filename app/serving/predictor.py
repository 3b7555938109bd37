"""The Predictor: which models are loaded, admission control, and one batcher per model.

Held on `app.state.predictor` (see `app.deps.PredictorDep`); routes hand it a `ModelSpec`
read from SQL and get back per-label probabilities. It knows nothing of HTTP or SQL.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.serving.batching import Batcher
from app.serving.cache import MemoryLRU
from app.telemetry import MODEL_CACHE
from core.settings import Settings

if TYPE_CHECKING:
    from core.serving.runtime import Encoded, LoadedModel

log = logging.getLogger("tuneserve.serving")

# A request with more characters than this is tokenized in a thread: tokenizing 256 texts of
# 20,000 characters takes about a second, which the event loop must not spend. Shorter ones
# (tens of microseconds) are cheaper inline than a thread hop.
ENCODE_INLINE_MAX_CHARS = 4096


@dataclass(frozen=True)
class ModelSpec:
    """What the predictor needs of a tuned model (the route builds it from the SQL row)."""

    model_id: str
    path: Path
    task: str  # single_label | multi_label
    labels: tuple[str, ...]
    max_seq_length: int | None = None
    thresholds: dict[str, float] = field(default_factory=dict)  # multi-label, tuned on validation


@dataclass(frozen=True, slots=True)
class TextScores:
    probs: list[float]  # one per label, in the model's label order
    truncated: bool  # the text was longer than the model's max length and was cut


class QueueFull(Exception):
    """More texts are waiting than settings.predict_max_queue allows."""

    def __init__(self, pending: int, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"the prediction queue is full ({pending} texts waiting, limit {limit}); "
            f"retry in {retry_after_s} s"
        )
        self.pending, self.limit, self.retry_after_s = pending, limit, retry_after_s


class ModelLoadError(Exception):
    """The model's files are missing or do not load; the message says which and why."""


@dataclass
class _Entry:
    model: LoadedModel
    batcher: Batcher[Encoded, list[float]]


class Predictor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cache: MemoryLRU[_Entry] = MemoryLRU(settings.predict_cache_mb * 1024 * 1024)
        self._loading: dict[str, asyncio.Task[_Entry]] = {}
        # One thread runs every forward: on CPU, two models' forwards at once would only fight
        # over the same cores (and torch already uses all of them inside one forward).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneserve-forward")
        self._pending_texts = 0
        self._retired: set[Batcher[Encoded, list[float]]] = set()

    # --- the public interface ----------------------------------------------------------
    async def predict(self, spec: ModelSpec, texts: list[str]) -> list[TextScores]:
        """Per-label probabilities for each text, in order. Raises QueueFull (admission
        control) and ModelLoadError (files missing or unreadable)."""
        self._admit(len(texts))
        self._pending_texts += len(texts)
        try:
            entry = await self._get(spec)
            encoded = await self._encode(entry.model, texts)
            while entry.batcher.closed:  # evicted while we were tokenizing: same files, reload
                entry = await self._get(spec)
            futures = entry.batcher.submit(encoded, [len(e.input_ids) for e in encoded])
            probs = await asyncio.gather(*futures)
        finally:
            self._pending_texts -= len(texts)
        return [TextScores(p, e.truncated) for p, e in zip(probs, encoded, strict=True)]

    async def load(self, spec: ModelSpec) -> None:
        """Load a model ahead of its first request (warm-up)."""
        await self._get(spec)

    def evict(self, model_id: str) -> bool:
        """Forget a model (deleted or replaced); requests already queued are still answered."""
        entry = self._cache.pop(model_id)
        if entry is None:
            return False
        self._retire(entry)
        return True

    def loaded(self) -> list[str]:
        """Loaded model ids, least recently used first."""
        return self._cache.keys()

    def stats(self) -> dict[str, Any]:
        return {
            "loaded": self.loaded(),
            "cache_used_bytes": self._cache.used_bytes,
            "cache_budget_bytes": self._cache.budget_bytes,
            "pending_texts": self._pending_texts,
        }

    async def aclose(self) -> None:
        """Cancel every batcher and fail what is still queued (app shutdown)."""
        batchers = [*self._retired]
        for key in self._cache.keys():
            entry = self._cache.pop(key)
            if entry is not None:
                batchers.append(entry.batcher)
        for task in list(self._loading.values()):
            task.cancel()
        await asyncio.gather(*(b.aclose() for b in batchers))
        self._retired.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- admission, loading, encoding --------------------------------------------------
    def _admit(self, n_texts: int) -> None:
        limit = self.settings.predict_max_queue
        if self._pending_texts + n_texts > limit:
            raise QueueFull(self._pending_texts, limit, self._retry_after_s())

    def _retry_after_s(self) -> int:
        """Seconds until the queue has drained at the recent forward rate (at least 1)."""
        rates = [e.batcher.texts_per_s for _, e in self._items() if e.batcher.texts_per_s]
        if not rates:
            return 1
        return max(1, math.ceil(self._pending_texts / max(rates)))

    def _items(self) -> list[tuple[str, _Entry]]:
        return [(k, e) for k in self._cache.keys() if (e := self._cache.get(k)) is not None]

    async def _get(self, spec: ModelSpec) -> _Entry:
        entry = self._cache.get(spec.model_id)
        MODEL_CACHE.labels("hit" if entry is not None else "miss").inc()
        if entry is not None:
            return entry
        loading = self._loading.get(spec.model_id)
        if loading is None:
            # A task of its own, shared by every request for this model: one load, and a
            # client that disconnects does not abort it for the others.
            loading = asyncio.get_running_loop().create_task(self._load(spec))
            self._loading[spec.model_id] = loading
            loading.add_done_callback(lambda _: self._loading.pop(spec.model_id, None))
        return await asyncio.shield(loading)

    async def _load(self, spec: ModelSpec) -> _Entry:
        if not (spec.path / "config.json").is_file():
            raise ModelLoadError(
                f"the files of model {spec.model_id} are missing (no config.json in {spec.path})"
            )
        try:
            model = await asyncio.to_thread(_load_model, spec, self.settings.predict_device)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model {spec.model_id} could not be loaded: {exc}") from exc
        batcher: Batcher[Encoded, list[float]] = Batcher(
            model.forward,
            executor=self._executor,
            max_batch_size=self.settings.predict_max_batch_size,
            max_wait_ms=self.settings.predict_max_wait_ms,
            max_batch_tokens=self.settings.predict_max_batch_tokens,
            name=spec.model_id,
        )
        entry = _Entry(model, batcher)
        size = model.size_bytes
        for old_id, old in self._cache.put(spec.model_id, entry, size):
            log.info("evicting model %s to fit model %s (%d MB)", old_id, spec.model_id, size >> 20)
            self._retire(old)
        log.info("loaded model %s (%d MB) from %s", spec.model_id, size >> 20, spec.path)
        return entry

    def _retire(self, entry: _Entry) -> None:
        """Close the batcher; keep a reference until its queue drained so it is not collected."""
        entry.batcher.close()
        self._retired = {b for b in self._retired if not b.done()}
        self._retired.add(entry.batcher)

    @staticmethod
    async def _encode(model: LoadedModel, texts: list[str]) -> list[Encoded]:
        if sum(len(t) for t in texts) <= ENCODE_INLINE_MAX_CHARS:
            return model.encode(texts)
        return await asyncio.to_thread(model.encode, texts)


def _load_model(spec: ModelSpec, device: str) -> LoadedModel:
    # Idle OpenMP workers sleep instead of spinning. The API process shares its cores with the
    # event loop, HTTP parsing and tokenization (and, on a shared host, with other processes):
    # spinning workers took that CPU and cut /predict throughput tenfold under load on 2 cores.
    # Read once, when torch loads libgomp just below; set OMP_WAIT_POLICY=ACTIVE to opt out.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from core.serving.runtime import LoadedModel  # torch is imported here, on the first load

    return LoadedModel(
        spec.path, task=spec.task, num_labels=len(spec.labels), max_seq_length=spec.max_seq_length,
        device=device,
    )
