"""The generation engine on the tiny random Llama (fp32, CPU): batched greedy replies equal
`model.generate` one prompt at a time token for token (sequences joining a running batch included),
an out-of-memory error halves the batch and changes nothing, stop strings, seeds, adapters of one
base mixed in one batch, and the async entry's streaming and cancellation."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from core.serving.engine import Engine, GenerationParams, Reply, generate_many
from core.serving.generation import ChatModels, ChatSpec
from core.settings import Settings
from tests.conftest import make_chat_adapter

PROMPTS = [
    [{"role": "user", "content": "12시 땡!"}],
    [{"role": "user", "content": "1지망 학교 떨어졌어"}],
    [{"role": "system", "content": "짧게 답하세요."}, {"role": "user", "content": "3박4일 놀러가고 싶다"}],
    [{"role": "user", "content": "PPL 심하네"}],
    [{"role": "user", "content": "SD카드 망가졌어 " * 3}],
    [{"role": "user", "content": "가끔 궁금해"}],
]


def _settings(**values: Any) -> Settings:
    return Settings(**{"generate_max_wait_ms": 1.0, **values})


@pytest.fixture(scope="module")
def models() -> ChatModels:
    return ChatModels("cpu")


@pytest.fixture(scope="module")
def runtime(models: ChatModels, tiny_chat_lm_dir: Path) -> Any:
    return models.runtime(ChatSpec(model_id="full", path=tiny_chat_lm_dir, adapter=False, base_path=None))


def _reference(model: Any, runtime: Any, ids: list[int], max_new_tokens: int) -> list[int]:
    """`model.generate` alone on one prompt (no padding): the one-at-a-time reply's tokens."""
    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([ids]),
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=runtime.eos_ids,
                             pad_token_id=runtime.tokenizer.pad_token_id, temperature=None, top_p=None,
                             top_k=None)
    new = out[0, len(ids):].tolist()
    return [t for t in new if t not in runtime.eos_ids]


def _tokens(runtime: Any, reply: Reply) -> list[int]:
    return list(runtime.tokenizer(reply.text, add_special_tokens=False)["input_ids"])


def _texts(replies: list[Reply]) -> list[str]:
    return [r.text for r in replies]


@pytest.mark.parametrize("rows", [64, 2])  # all in one batch; two at a time, the others joining as rows end
def test_batched_greedy_equals_one_at_a_time(runtime: Any, rows: int) -> None:
    params = GenerationParams(max_new_tokens=24)
    replies = generate_many(runtime, PROMPTS, params, _settings(generate_max_batch_rows=rows))
    for prompt, reply in zip(PROMPTS, replies, strict=True):
        ids = runtime.prompt_ids(prompt)
        expected = _reference(runtime.base.model, runtime, ids, 24)
        assert reply.text == runtime.tokenizer.decode(expected, skip_special_tokens=True)
        assert reply.completion_tokens == len(expected)
        assert reply.prompt_tokens == len(ids)
        assert reply.finish_reason == ("length" if len(expected) == 24 else "stop")


def test_sequences_joining_a_running_batch_decode_as_alone(runtime: Any) -> None:
    """Rows of different lengths leave at different steps and the waiting ones join the running
    batch (their cache left-padded to its width): each reply is still the one-at-a-time reply."""
    lengths = [5, 24, 9, 17, 3, 12]

    async def run() -> tuple[list[Reply], int]:
        engine = Engine(_settings(generate_max_batch_rows=3))
        streams = [engine.submit(runtime, p, GenerationParams(max_new_tokens=n))
                   for p, n in zip(PROMPTS, lengths, strict=True)]
        replies = [await s.text() for s in streams]
        await engine.aclose()
        return replies, engine.stats.joins

    replies, joins = asyncio.run(run())
    assert joins >= 2  # newcomers did join running batches
    for prompt, n, reply in zip(PROMPTS, lengths, replies, strict=True):
        expected = _reference(runtime.base.model, runtime, runtime.prompt_ids(prompt), n)
        assert reply.text == runtime.tokenizer.decode(expected, skip_special_tokens=True), (n, reply)
        assert reply.completion_tokens == len(expected)


def test_out_of_memory_halves_the_batch_and_keeps_the_replies(runtime: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    params = GenerationParams(max_new_tokens=16)
    clean = generate_many(runtime, PROMPTS, params, _settings())
    caplog.set_level(logging.WARNING, "tuneserve.serving.engine")
    faulty = generate_many(runtime, PROMPTS, params, _settings(fault_oom_above_generate_rows=2))
    assert _texts(faulty) == _texts(clean)
    halvings = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert halvings and "at most 3 rows" in halvings[0], halvings
    # One row alone that does not fit: the caller is told, not left waiting.
    from core.serving.engine import GenerationOutOfMemory

    with pytest.raises(GenerationOutOfMemory, match="does not fit in memory"):
        generate_many(runtime, PROMPTS[:2], params, _settings(fault_oom_above_generate_rows=0))


def test_stop_strings_end_the_reply_before_them(runtime: Any) -> None:
    [free] = generate_many(runtime, PROMPTS[:1], GenerationParams(max_new_tokens=24), _settings())
    assert len(free.text) > 6, free
    stop = free.text[4:6]
    cut = free.text.index(stop)
    [stopped] = generate_many(runtime, PROMPTS[:1], GenerationParams(max_new_tokens=24, stop=("never", stop)),
                              _settings())
    assert stopped.text == free.text[:cut]
    assert stopped.finish_reason == "stop"


def test_a_seed_fixes_a_sampled_reply_whatever_its_batch(runtime: Any) -> None:
    sampled = GenerationParams(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=7)
    [alone] = generate_many(runtime, PROMPTS[:1], sampled, _settings())
    batched = generate_many(runtime, PROMPTS, sampled, _settings())
    assert batched[0].text == alone.text
    others = {generate_many(runtime, PROMPTS[:1],
                            GenerationParams(max_new_tokens=20, temperature=1.0, seed=s), _settings())[0].text
              for s in range(4)}
    assert len(others) > 1  # the seed, not the model, decides: different seeds sample differently


def test_adapters_of_one_base_share_a_batch(tiny_chat_lm_dir: Path, tmp_path: Path) -> None:
    models = ChatModels("cpu")
    adapters = [make_chat_adapter(tiny_chat_lm_dir, tmp_path / f"a{i}", i) for i in range(2)]
    base = str(tiny_chat_lm_dir)
    runtimes = [models.runtime(ChatSpec(model_id=f"lora{i}", path=a, adapter=True, base_path=base))
                for i, a in enumerate(adapters)]
    assert runtimes[0].base is runtimes[1].base
    params = GenerationParams(max_new_tokens=16)
    settings = _settings()
    # Each adapter alone, then mixed in one lane with the base itself.
    alone = [generate_many(r, PROMPTS[:3], params, settings) for r in runtimes]
    # A batch of one adapter runs it as peft's active adapter (no per-adapter gather and scatter);
    # the mixed batch below goes through adapter_names, and both give the same greedy replies.
    assert runtimes[1].base.model.active_adapter == "lora1"
    base_alone = generate_many(runtimes[0], PROMPTS[:3], params, settings, base_only=True)
    assert _texts(alone[0]) != _texts(alone[1]) != _texts(base_alone)

    async def mixed() -> list[Reply]:
        engine = Engine(settings)
        streams = [engine.submit(r, p, params) for p in PROMPTS[:3] for r in runtimes]
        replies = [await s.text() for s in streams]
        await engine.aclose()
        return replies

    replies = asyncio.run(mixed())
    assert _texts(replies[0::2]) == _texts(alone[0])
    assert _texts(replies[1::2]) == _texts(alone[1])
    shutil.rmtree(tmp_path)


def test_submit_streams_pieces_and_cancel_stops_the_sequence(runtime: Any) -> None:
    settings = _settings()

    async def run() -> tuple[list[str], Reply, Reply, int, Any]:
        engine = Engine(settings)
        long = GenerationParams(max_new_tokens=200, temperature=1.0, seed=3)  # sampled: no early end of turn
        keep = engine.submit(runtime, PROMPTS[0], GenerationParams(max_new_tokens=24))
        dropped = engine.submit(runtime, PROMPTS[1], long)
        seen = 0
        async for _ in dropped:
            seen += 1
            if seen == 3:
                break  # the client went away: leaving the iterator cancels the sequence
        pieces = [piece async for piece in keep]
        for _ in range(200):
            if engine.stats.cancelled and not engine.stats.queued_tokens:
                break  # both released their reservation (just after their last piece)
            await asyncio.sleep(0.01)
        stats = engine.stats
        await engine.aclose()
        assert keep.reply is not None
        assert dropped.seq is not None and dropped.seq.tokens_at_cancel is not None
        return pieces, keep.reply, stats.last_cancelled[-1], dropped.seq.tokens_at_cancel, stats

    pieces, reply, cancelled, tokens_at_cancel, stats = asyncio.run(run())
    assert "".join(pieces) == reply.text and len(pieces) > 1
    assert cancelled.finish_reason == "cancelled"
    # Stopped before the next decoding step: at most the one step already running finished.
    assert cancelled.completion_tokens <= tokens_at_cancel + 1 < 200
    assert stats.queued_tokens == 0  # every reservation was released
