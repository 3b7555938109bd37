"""The dynamic batcher: one asyncio task per loaded model gathers concurrent requests' texts
into batches and runs each batch's forward in a worker thread.

A batch closes when it holds `max_batch_size` texts, when its padded size would pass
`max_batch_tokens`, or `max_wait_ms` after its first text arrived, whichever comes first.
Texts arriving while a forward runs wait in the queue and form the next batch, so under load
the batch fills itself and the wait never applies. Answers go back in arrival order.

The wait is only worth paying when texts arrive together. While the traffic is one text at a
time (the last batch held a single text), a lone text runs at once: a single client saves the
whole wait on every request. The first burst after a quiet spell then runs its first text alone
and the rest gather behind its forward, after which the wait applies again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.telemetry import PREDICT_BATCH_SIZE, PREDICT_QUEUE_WAIT

log = logging.getLogger("tuneserve.serving")

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass(slots=True)
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    tokens: int
    future: asyncio.Future[ResultT]
    queued_at: float  # perf_counter() at submit: the queue wait /metrics reports


class BatcherClosed(RuntimeError):
    """The batcher was shut down (its model was evicted, deleted or the app stops)."""


class Batcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        run_batch: Callable[[list[ItemT]], list[ResultT]],
        *,
        executor: Executor,
        max_batch_size: int,
        max_wait_ms: float,
        max_batch_tokens: int,
        name: str = "",
    ) -> None:
        self._run_batch = run_batch
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_batch_tokens = max_batch_tokens
        self.name = name
        self._queue: deque[_Pending[ItemT, ResultT]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        # Texts per second of forward time, smoothed: what Retry-After is estimated from.
        self.texts_per_s: float | None = None
        self.batches_run = 0
        # Texts in the last batch run: 1 (or none yet) means nobody is arriving alongside.
        self.last_batch_size = 0

    def __len__(self) -> int:
        return len(self._queue)

    def done(self) -> bool:
        """Closed and its task has finished (or never started)."""
        return self.closed and (self._task is None or self._task.done())

    def submit(self, items: Sequence[ItemT], tokens: Sequence[int]) -> list[asyncio.Future[ResultT]]:
        """Queue texts (no await: callers hold no lock across it); one future per text."""
        if self.closed:
            raise BatcherClosed(f"batcher {self.name} is closed")
        loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = loop.create_task(self._loop(), name=f"batcher-{self.name}")
        futures: list[asyncio.Future[ResultT]] = []
        for item, n_tokens in zip(items, tokens, strict=True):
            future: asyncio.Future[ResultT] = loop.create_future()
            self._queue.append(_Pending(item, n_tokens, future, time.perf_counter()))
            futures.append(future)
        self._wakeup.set()
        return futures

    def close(self) -> None:
        """Accept nothing new; the task answers what is queued, then ends."""
        self.closed = True
        self._wakeup.set()

    async def aclose(self) -> None:
        """Stop now: cancel the task and fail whatever is still queued."""
        self.closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(BatcherClosed(f"batcher {self.name} shut down"))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                if self.closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.last_batch_size > 1 or len(self._queue) > 1:
                await self._gather(loop)
            batch = [p for p in self._take_batch() if not p.future.cancelled()]
            if batch:
                await self._run(loop, batch)

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait up to max_wait for the batch to fill (returns at once when it is full)."""
        deadline = loop.time() + self.max_wait_s
        while len(self._queue) < self.max_batch_size and not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Pending[ItemT, ResultT]]:
        """Oldest first, while the batch padded to its longest text stays within the token
        budget; a single text always fits (it is already cut to the model's max length)."""
        batch: list[_Pending[ItemT, ResultT]] = []
        longest = 0
        while self._queue and len(batch) < self.max_batch_size:
            head = self._queue[0]
            width = max(longest, head.tokens)
            if batch and width * (len(batch) + 1) > self.max_batch_tokens:
                break
            batch.append(self._queue.popleft())
            longest = width
        return batch

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Pending[ItemT, ResultT]]) -> None:
        started = time.perf_counter()
        PREDICT_BATCH_SIZE.observe(len(batch))
        for p in batch:
            PREDICT_QUEUE_WAIT.observe(started - p.queued_at)
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, [p.item for p in batch])
        except asyncio.CancelledError:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(BatcherClosed(f"batcher {self.name} shut down"))
            raise
        except Exception as exc:
            log.exception("batch of %d texts failed on %s", len(batch), self.name)
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        elapsed = max(time.perf_counter() - started, 1e-6)
        rate = len(batch) / elapsed
        self.texts_per_s = rate if self.texts_per_s is None else 0.8 * self.texts_per_s + 0.2 * rate
        self.batches_run += 1
        self.last_batch_size = len(batch)
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)

