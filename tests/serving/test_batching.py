"""The batcher on its own, with a fake forward: ordering, limits, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.serving.batching import Batcher, BatcherClosed
from core.serving.runtime import plan_chunks

pytestmark = pytest.mark.anyio


def _cost(lengths: list[int], ends: list[int], overhead: int) -> int:
    starts = [0, *ends[:-1]]
    return sum((e - s) * lengths[e - 1] + overhead for s, e in zip(starts, ends, strict=True))


def test_plan_chunks_is_optimal_on_small_inputs() -> None:
    rng = random.Random(0)
    for _ in range(50):
        lengths = sorted(rng.randint(3, 60) for _ in range(rng.randint(1, 7)))
        ends = plan_chunks(lengths, overhead_tokens=40)
        assert ends[-1] == len(lengths) and ends == sorted(set(ends))
        # Brute force over every way to cut the sorted list.
        best = min(
            _cost(lengths, [*cuts, len(lengths)], 40)
            for r in range(len(lengths))
            for cuts in itertools.combinations(range(1, len(lengths)), r)
        )
        assert _cost(lengths, ends, 40) == best


def test_plan_chunks_keeps_even_lengths_together() -> None:
    assert plan_chunks([10] * 32, overhead_tokens=96) == [32]
    assert plan_chunks([5] * 31 + [500], overhead_tokens=96) == [31, 32]


def _batcher(executor: ThreadPoolExecutor, seen: list[list[int]], **limits: float) -> Batcher[int, int]:
    def run(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [item * 10 for item in items]

    return Batcher(
        run,
        executor=executor,
        max_batch_size=int(limits.get("max_batch_size", 8)),
        max_wait_ms=limits.get("max_wait_ms", 5.0),
        max_batch_tokens=int(limits.get("max_batch_tokens", 10_000)),
        name="fake",
    )


async def test_concurrent_requests_get_their_own_answers_in_order() -> None:
    seen: list[list[int]] = []
    with ThreadPoolExecutor(1) as executor:
        batcher = _batcher(executor, seen)

        async def request(first: int, n: int) -> list[int]:
            await asyncio.sleep(random.random() / 1000)
            items = list(range(first, first + n))
            return list(await asyncio.gather(*batcher.submit(items, [5] * n)))

        answers = await asyncio.gather(*(request(100 * i, i % 4 + 1) for i in range(50)))
        await batcher.aclose()
    for i, answer in enumerate(answers):
        assert answer == [10 * x for x in range(100 * i, 100 * i + i % 4 + 1)]
    assert max(len(batch) for batch in seen) <= 8
    assert len(seen) < 50  # requests were gathered, not run one by one
    flat = [x for batch in seen for x in batch]
    assert sorted(flat) == sorted(set(flat))  # nothing ran twice


async def test_token_budget_bounds_padded_batch() -> None:
    seen: list[list[int]] = []
    with ThreadPoolExecutor(1) as executor:
        batcher = _batcher(executor, seen, max_batch_tokens=100, max_batch_size=32)
        # items are their own token lengths: 10 texts of 30 tokens fit 3 per batch (90 <= 100)
        results = await asyncio.gather(*batcher.submit([30] * 10, [30] * 10))
        await batcher.aclose()
    assert results == [300] * 10
    assert all(len(b) * max(b) <= 100 for b in seen)
    assert [len(b) for b in seen] == [3, 3, 3, 1]


async def test_close_refuses_new_texts_and_aclose_fails_the_rest() -> None:
    entered, release = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as executor:
        def slow(items: list[int]) -> list[int]:
            entered.set()
            release.wait(5)
            return items

        batcher: Batcher[int, int] = Batcher(
            slow, executor=executor, max_batch_size=2, max_wait_ms=0, max_batch_tokens=100
        )
        futures = batcher.submit([1, 2, 3, 4], [1] * 4)
        # The first batch is in the forward (waited for, in a thread: the loop must keep running).
        assert await asyncio.to_thread(entered.wait, 5)
        assert len(batcher) == 2  # the second batch still waits in the queue
        batcher.close()
        with pytest.raises(BatcherClosed):
            batcher.submit([5], [1])
        await batcher.aclose()
        release.set()
    assert all(isinstance(f.exception(), BatcherClosed) for f in futures)


async def test_a_lone_text_runs_at_once_and_the_wait_returns_with_company() -> None:
    """One text at a time pays no batch wait; once a batch held several, the wait applies."""
    seen: list[list[int]] = []
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(1) as executor:
        batcher = _batcher(executor, seen, max_wait_ms=600)
        lone: list[float] = []
        for item in range(3):
            started = loop.time()
            assert await batcher.submit([item], [5])[0] == item * 10
            lone.append(loop.time() - started)
        # Two texts together: they gather (the batch is not full), then run as one batch.
        assert await asyncio.gather(*batcher.submit([7, 8], [5, 5])) == [70, 80]
        started = loop.time()
        assert await batcher.submit([9], [5])[0] == 90  # company was seen: this one waits
        waited = loop.time() - started
        await batcher.aclose()
    assert max(lone) < 0.3, lone  # a 600 ms wait would show in every one of them
    assert waited >= 0.5, waited
    assert seen == [[0], [1], [2], [7, 8], [9]]
