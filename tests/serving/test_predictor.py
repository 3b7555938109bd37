"""The Predictor over real tiny models: batching is invisible in the answers, the queue
refuses work past its bound, and the cache stays within its memory budget."""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import pytest

from app.serving import ModelLoadError, ModelSpec, Predictor, QueueFull
from core.settings import Settings
from tests.serving.helpers import KOREAN_LABELS, MULTI_LABELS, tiny_model_dir

pytestmark = pytest.mark.anyio

WORDS = "the movie was a truly wonderful and boring mess of charm wit gags 정말 재미있는 영화 였다".split()


def _texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(n)]


def _spec(tmp_path: Path, name: str, *, task: str = "single_label", seed: int = 0, **kw: int) -> ModelSpec:
    directory = tiny_model_dir(tmp_path / name, task=task, seed=seed)
    labels = MULTI_LABELS if task == "multi_label" else KOREAN_LABELS
    return ModelSpec(model_id=name, path=directory, task=task, labels=tuple(labels), **kw)


def _settings(**overrides: float) -> Settings:
    return Settings(**{"predict_max_wait_ms": 5.0, **overrides})  # type: ignore[arg-type]


async def test_concurrent_requests_match_an_unbatched_forward(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "m1")
    predictor = Predictor(_settings())
    requests = [_texts(random.Random(i).randint(1, 3), seed=i) for i in range(40)]
    try:
        answers = await asyncio.gather(*(predictor.predict(spec, texts) for texts in requests))
        entry = predictor._cache.get("m1")
        assert entry is not None
        model, batches_run = entry.model, entry.batcher.batches_run
    finally:
        await predictor.aclose()
    assert batches_run < len(requests)  # gathered into batches
    for texts, answer in zip(requests, answers, strict=True):
        assert len(answer) == len(texts)
        for text, scores in zip(texts, answer, strict=True):
            alone = model.forward(model.encode([text]))[0]  # batch of one: no padding at all
            assert scores.probs == pytest.approx(alone, abs=1e-5)
            assert sum(scores.probs) == pytest.approx(1.0, abs=1e-5)


async def test_multi_label_scores_are_independent_sigmoids(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "ml", task="multi_label")
    predictor = Predictor(_settings())
    try:
        (scores,) = await predictor.predict(spec, ["a text"])
    finally:
        await predictor.aclose()
    assert len(scores.probs) == len(MULTI_LABELS)
    # Each label's probability is the sigmoid of its own logit (a softmax would couple them).
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(spec.path)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(spec.path))
    with torch.no_grad():
        logits = model(**tokenizer(["a text"], return_tensors="pt")).logits[0]
    assert scores.probs == pytest.approx(torch.sigmoid(logits).tolist(), abs=1e-5)
    assert scores.probs != pytest.approx(torch.softmax(logits, dim=-1).tolist(), abs=1e-3)


async def test_texts_over_max_length_are_truncated_and_flagged(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "short", max_seq_length=8)
    predictor = Predictor(_settings())
    try:
        long_text, short_text = "word " * 50, "two words"
        answers = await predictor.predict(spec, [long_text, short_text])
    finally:
        await predictor.aclose()
    assert [a.truncated for a in answers] == [True, False]


async def test_queue_full_is_refused_not_queued(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "q")
    predictor = Predictor(_settings(predict_max_queue=4))
    try:
        await predictor.load(spec)
        admitted = [asyncio.ensure_future(predictor.predict(spec, ["a", "b"])) for _ in range(2)]
        await asyncio.sleep(0)  # both admitted: 4 texts pending
        with pytest.raises(QueueFull) as refused:
            await predictor.predict(spec, ["c"])
        assert refused.value.retry_after_s >= 1
        assert "limit 4" in str(refused.value)
        assert all(len(r) == 2 for r in await asyncio.gather(*admitted))
        assert len(await predictor.predict(spec, ["c"])) == 1  # drained: admitted again
    finally:
        await predictor.aclose()


async def test_cache_evicts_least_recently_used_past_its_memory_budget(tmp_path: Path) -> None:
    a, b, c = (_spec(tmp_path, name, seed=i) for i, name in enumerate("abc"))
    probe = Predictor(_settings())
    await probe.load(a)
    size_mb = probe.stats()["cache_used_bytes"] / 2**20
    await probe.aclose()
    # Room for two tiny models, not three.
    predictor = Predictor(_settings(predict_cache_mb=int(2 * size_mb) + 1))
    try:
        await predictor.predict(a, ["x"])
        await predictor.predict(b, ["x"])
        await predictor.predict(a, ["x"])  # a is now the most recent
        await predictor.predict(c, ["x"])
        assert predictor.loaded() == ["a", "c"]  # b was least recently used
        assert predictor.stats()["cache_used_bytes"] <= predictor.stats()["cache_budget_bytes"]
        assert len(await predictor.predict(b, ["x"])) == 1  # evicted models load again
        assert predictor.loaded() == ["c", "b"]
        assert predictor.evict("c") and predictor.loaded() == ["b"]
    finally:
        await predictor.aclose()


async def test_concurrent_first_requests_load_the_model_once(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import app.serving.predictor as predictor_module

    spec = _spec(tmp_path, "once")
    loads: list[str] = []
    real = predictor_module._load_model

    def counting(s: ModelSpec, device: str):  # type: ignore[no-untyped-def]
        loads.append(s.model_id)
        return real(s, device)

    monkeypatch.setattr(predictor_module, "_load_model", counting)
    predictor = Predictor(_settings())
    try:
        await asyncio.gather(*(predictor.predict(spec, ["hi"]) for _ in range(5)))
    finally:
        await predictor.aclose()
    assert loads == ["once"]


async def test_missing_files_raise_a_load_error_that_names_them(tmp_path: Path) -> None:
    spec = ModelSpec(model_id="gone", path=tmp_path / "nowhere", task="single_label", labels=("a", "b"))
    predictor = Predictor(_settings())
    try:
        with pytest.raises(ModelLoadError, match="files of model gone are missing"):
            await predictor.predict(spec, ["x"])
    finally:
        await predictor.aclose()


def test_the_serving_package_does_not_import_torch_until_a_model_loads() -> None:
    import subprocess

    code = (
        "import sys, app.main, app.serving, app.routes.predict, app.routes.models; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'; "
        # The task-family catalogue (metrics POST /jobs validates against) is the one worker piece
        # the API reads; nothing else of the worker (Celery app, loop) may load in the API process.
        "loaded = [m for m in sys.modules "
        "          if m.startswith('worker.') and not m.startswith('worker.families')]; "
        "assert not loaded, f'worker imported: {loaded}'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_serving_device_auto_is_the_gpu_only_when_torch_sees_one() -> None:
    import torch

    from core.serving.runtime import serving_device

    assert serving_device(None) == serving_device("cpu") == torch.device("cpu")
    assert serving_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert serving_device("cuda:1") == torch.device("cuda", 1)
