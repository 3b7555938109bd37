"""The official `openai` client, its base_url pointed at a live tuneserve (uvicorn + a Celery
worker, tests/integration/live_service.py), on a tiny random Llama: upload weighted OpenAI and
ShareGPT files, fine-tune with n_epochs "auto", follow events and checkpoints, chat with the
result plain and streamed, pause, resume and cancel another job (an Alpaca file), and see the
same jobs through the native API. A user's script needs nothing but the client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pandas as pd
import pytest

from tests.conftest import FIXTURES
from tests.integration.conftest import service_env
from tests.integration.live_service import LiveService

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_chat_lm_dir: Path) -> Iterator[LiveService]:
    directory = tmp_path_factory.mktemp("openai-live")
    # Slow steps, so that a pause lands mid-run; a short generation report at the end of each job;
    # a succeeded job keeps its last 3 checkpoints, as OpenAI's do (the earlier ones are pruned).
    env = service_env(directory, f"sqlite:///{directory / 'tuneserve.sqlite'}",
                      f"sqla+sqlite:///{directory / 'broker.sqlite'}", fault_step_delay_s=0.3,
                      compare_max_prompts=2, compare_max_new_tokens=4, keep_checkpoints_after_success=3)
    live = LiveService(directory, env, tiny_chat_lm_dir).start()
    try:
        yield live
    finally:
        live.stop()


def _qa() -> list[tuple[str, str]]:
    frame = pd.read_csv(FIXTURES / "korean_chatbot_qa_slice.csv")
    return list(zip(frame["Q"], frame["A"], strict=True))


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return ("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n").encode()


def _weighted_openai(pairs: list[tuple[str, str]]) -> bytes:
    """Two-turn conversations whose first answer is context only (weight 0)."""
    return _jsonl([{"messages": [{"role": "system", "content": "친절하게 답하세요"},
                                 {"role": "user", "content": q},
                                 {"role": "assistant", "content": "음.", "weight": 0},
                                 {"role": "user", "content": "다시"},
                                 {"role": "assistant", "content": a, "weight": 1}]}
                   for q, a in pairs])


def _sharegpt(pairs: list[tuple[str, str]]) -> bytes:
    return _jsonl([{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
                   for q, a in pairs])


def _alpaca(pairs: list[tuple[str, str]]) -> bytes:
    return _jsonl([{"instruction": "답하세요", "input": q, "output": a} for q, a in pairs])


def _wait(client: openai.OpenAI, job_id: str, statuses: set[str], timeout_s: float = 300) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} is still {job.status}")


def test_a_script_with_only_the_openai_client_fine_tunes_and_chats(service: LiveService,
                                                                   tiny_chat_lm_dir: Path) -> None:
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="any key: auth is off", max_retries=0)
    pairs = _qa()
    training = client.files.create(file=("train.jsonl", _weighted_openai(pairs[:20])), purpose="fine-tune")
    validation = client.files.create(file=("valid.jsonl", _sharegpt(pairs[20:28])), purpose="fine-tune")

    job = client.fine_tuning.jobs.create(
        model=str(tiny_chat_lm_dir), training_file=training.id, validation_file=validation.id,
        suffix="kochat", seed=7, metadata={"team": "qa"},
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": "auto", "batch_size": 10, "learning_rate_multiplier": 2}}})
    # 20 examples: OpenAI's rule raises 3 epochs to 100 // 20 = 5; the rate is 2 x chat's 2e-4.
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (5, 10)
    assert job.status in ("queued", "running") and job.fine_tuned_model is None and job.seed == 7
    assert (job.training_file, job.validation_file) == (training.id, validation.id)
    assert job.metadata == {"team": "qa"}
    native = httpx.get(f"{service.url}/jobs/{job.id}").json()  # the same row, the native way
    assert native["hyperparameters"]["epochs"] == 5 and native["hyperparameters"]["learning_rate"] == 4e-4
    assert native["task"] == "chat"

    done = _wait(client, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    model_id = httpx.get(f"{service.url}/jobs/{job.id}").json()["model_id"]
    assert done.fine_tuned_model == f"ft:{tiny_chat_lm_dir.name}:kochat:{model_id}"
    assert done.trained_tokens and done.trained_tokens > 0 and done.finished_at and done.error is None

    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    assert [e.created_at for e in events] == sorted((e.created_at for e in events), reverse=True)
    metrics = [e for e in events if e.type == "metrics"]
    train_points = [e.data for e in metrics if e.data and e.data.get("train_loss") is not None]  # type: ignore[union-attr]
    assert sorted(p["step"] for p in train_points) == list(range(1, 11))  # type: ignore[index]
    assert all(0.0 <= p["train_mean_token_accuracy"] <= 1.0 for p in train_points)  # type: ignore[index]
    assert any(e.data and e.data.get("valid_loss") is not None for e in metrics)  # type: ignore[union-attr]
    assert any(e.type == "message" and "n_epochs auto: 5" in e.message for e in events)
    first_two = client.fine_tuning.jobs.list_events(job.id, limit=2)
    assert first_two.has_more and [e.id for e in first_two.data] == [e.id for e in events[:2]]
    after = client.fine_tuning.jobs.list_events(job.id, after=events[1].id, limit=1).data
    assert [e.id for e in after] == [events[2].id]

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number == 10  # newest first: the last epoch's end
    assert checkpoints[0].metrics.valid_loss is not None and checkpoints[0].metrics.train_loss is not None
    assert checkpoints[0].metrics.train_mean_token_accuracy is not None
    assert checkpoints[0].fine_tuned_model_checkpoint.endswith(":ckpt-step-10")

    assert model_id in [m.id for m in client.models.list().data]
    assert client.models.retrieve(done.fine_tuned_model).id == model_id
    messages: Any = [{"role": "user", "content": "12시 땡!"}]
    reply = client.chat.completions.create(model=done.fine_tuned_model, messages=messages, max_tokens=6,
                                           temperature=0)
    assert reply.object == "chat.completion" and reply.model == done.fine_tuned_model
    [choice] = reply.choices
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.completion_tokens <= 6
    assert reply.usage.prompt_tokens > 5 and reply.usage.total_tokens == (
        reply.usage.prompt_tokens + reply.usage.completion_tokens)
    several = client.chat.completions.create(model=model_id, messages=messages, max_completion_tokens=4, n=2,
                                             temperature=1.0, seed=3)
    assert [c.index for c in several.choices] == [0, 1]
    again = client.chat.completions.create(model=model_id, messages=messages, max_completion_tokens=4, n=2,
                                           temperature=1.0, seed=3)
    assert [c.message.content for c in again.choices] == [c.message.content for c in several.choices]

    chunks = list(client.chat.completions.create(model=model_id, messages=messages, max_tokens=6,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content  # greedy: the same reply as the plain call
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    # A stop string ends the reply where it begins, plain and streamed alike.
    text = choice.message.content or ""
    assert len(text) >= 2, text
    stop = text[len(text) // 2:][:4]
    cut = client.chat.completions.create(model=model_id, messages=messages, max_tokens=6, temperature=0,
                                         stop=[stop])
    assert cut.choices[0].message.content == text[:text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"

    # A LoRA checkpoint is served by its name, as OpenAI serves its checkpoints; a pruned one
    # (the job keeps its best and its last) is a 404 that says so.
    kept = {c["step"] for c in httpx.get(f"{service.url}/jobs/{job.id}/checkpoints").json() if c["available"]}
    earlier = [c for c in checkpoints if c.step_number in kept and c.step_number < 10]
    pruned = [c for c in checkpoints if c.step_number not in kept]
    assert earlier and pruned, (kept, [c.step_number for c in checkpoints])
    name = earlier[0].fine_tuned_model_checkpoint
    assert client.models.retrieve(name).id == name
    from_checkpoint = client.chat.completions.create(model=name, messages=messages, max_tokens=6,
                                                     temperature=0)
    assert from_checkpoint.model == name and from_checkpoint.choices[0].finish_reason in ("stop", "length")
    assert from_checkpoint.usage is not None and from_checkpoint.usage.completion_tokens >= 1
    with pytest.raises(openai.NotFoundError) as gone:
        client.chat.completions.create(model=pruned[0].fine_tuned_model_checkpoint, messages=messages)
    assert "was pruned" in gone.value.body["message"]  # type: ignore[index]
    cut_chunks = list(client.chat.completions.create(model=model_id, messages=messages, max_tokens=6,
                                                     temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in cut_chunks) == text[:text.find(stop)]
    assert cut_chunks[-1].choices[0].finish_reason == "stop"
    raw = httpx.post(f"{service.url}/v1/chat/completions", json={"model": model_id, "messages": messages,
                                                                 "max_tokens": 2, "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")

    # The error objects, as the client raises them.
    with pytest.raises(openai.BadRequestError) as bad_file:
        client.files.create(file=("bad.jsonl", _weighted_openai(pairs[:3]) + _jsonl(
            [{"messages": [{"role": "user", "content": "혼자"}]}])), purpose="fine-tune")
    assert "line 4: the last turn must be the assistant's" in bad_file.value.message
    assert bad_file.value.code == "invalid_file" and bad_file.value.param == "file"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="ft:gpt-4o-mini:acme::nope", messages=messages)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad_param:
        client.fine_tuning.jobs.create(model=str(tiny_chat_lm_dir), training_file=training.id,
                                       hyperparameters={"batch_size": "big"})  # type: ignore[typeddict-item]
    assert bad_param.value.param == "hyperparameters.batch_size"

    # Deleting the job takes its checkpoints (and their loaded adapters) with it; its tuned model stays.
    assert httpx.delete(f"{service.url}/jobs/{job.id}").status_code == 204
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=name, messages=messages, max_tokens=2)
    assert client.chat.completions.create(model=model_id, messages=messages, max_tokens=2).choices


def test_pause_resume_and_cancel_an_alpaca_job_and_the_native_api_sees_every_job(
        service: LiveService, tiny_chat_lm_dir: Path) -> None:
    client = openai.OpenAI(base_url=f"{service.url}/v1", api_key="unused", max_retries=0)
    pairs = _qa()
    alpaca = client.files.create(file=("alpaca.jsonl", _alpaca(pairs[:40])), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=str(tiny_chat_lm_dir), training_file=alpaca.id,
                                         hyperparameters={"n_epochs": 20, "batch_size": 4})
    base = service.url
    deadline = time.monotonic() + 240
    while httpx.get(f"{base}/jobs/{job.id}").json()["step"] < 2:
        assert time.monotonic() < deadline, "the job never reached step 2"
        time.sleep(0.3)
    paused = client.fine_tuning.jobs.pause(job.id)
    assert paused.status == "running"  # it stops after the current optimizer step
    assert _wait(client, job.id, {"paused", "failed", "succeeded"}).status == "paused"
    assert httpx.get(f"{base}/jobs/{job.id}").json()["state"] == "cancelled"  # natively: stopped
    stopped_at = httpx.get(f"{base}/jobs/{job.id}").json()["step"]
    # learning_rate_multiplier "auto" (the default): the range test chose the rate before step 1,
    # and the job object reports it as a multiple of chat's default 2e-4.
    assert job.hyperparameters.learning_rate_multiplier == "auto"  # as created: not chosen yet
    chosen = httpx.get(f"{base}/jobs/{job.id}").json()["chosen_learning_rate"]
    assert chosen is not None and chosen > 0
    assert client.fine_tuning.jobs.retrieve(job.id).hyperparameters.learning_rate_multiplier == \
        pytest.approx(chosen / 2e-4)
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status in ("queued", "running")
    deadline = time.monotonic() + 240
    while httpx.get(f"{base}/jobs/{job.id}").json()["step"] <= stopped_at:
        assert time.monotonic() < deadline, "the resumed job made no progress"
        time.sleep(0.3)
    assert client.fine_tuning.jobs.cancel(job.id).status in ("running", "cancelled")
    assert _wait(client, job.id, {"cancelled", "failed", "succeeded"}).status == "cancelled"
    kinds = [e["kind"] for e in httpx.get(f"{base}/jobs/{job.id}/events").json()]
    assert "pause_requested" in kinds and "resume_requested" in kinds and "resumed" in kinds
    # A ShareGPT file through the native API trains too, and /v1 shows that job as its own.
    with httpx.Client(base_url=base) as native:
        dataset = native.post("/datasets", files={"file": ("sharegpt.jsonl", _sharegpt(pairs[40:60]))}).json()
        assert dataset["report"]["chat_format"] == "sharegpt"
        created = native.post("/jobs", json={"dataset_id": dataset["id"], "base_model": str(tiny_chat_lm_dir),
                                             "hyperparameters": {"max_steps": 2, "batch_size": 4}})
        assert created.status_code == 201, created.text
    sharegpt_job = _wait(client, created.json()["id"], {"succeeded", "failed", "cancelled"})
    assert sharegpt_job.status == "succeeded", sharegpt_job.error
    assert sharegpt_job.training_file == dataset["id"] and sharegpt_job.fine_tuned_model is not None
    assert sharegpt_job.fine_tuned_model.startswith(f"ft:{tiny_chat_lm_dir.name}::mdl_")  # no suffix
    # The native API lists every /v1 job, and /v1 lists the chat jobs the native API made.
    native_ids = {j["id"] for j in httpx.get(f"{base}/jobs").json()["data"]}
    v1_ids = [j.id for j in client.fine_tuning.jobs.list(limit=100).data]
    assert job.id in native_ids and set(v1_ids) == native_ids
    assert v1_ids[:2] == [sharegpt_job.id, job.id]  # newest first
    page = client.fine_tuning.jobs.list(limit=1, after=sharegpt_job.id).data
    assert [j.id for j in page] == [job.id]
