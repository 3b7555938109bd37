"""The OpenAI-compatible routes in-process, driven by the official `openai` client (its HTTP
client is the app's TestClient): files, the error objects, parameters refused rather than
ignored, and keys kept apart. Training and chatting with a real worker is
tests/integration/test_openai_client.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import func, select, update

from app.auth import create_key
from core.db import session_scope
from core.tables import Checkpoint, Dataset, Job, TunedModel
from tests.conftest import configure

CHAT_LINES = [{"messages": [{"role": "user", "content": f"질문 {i}"},
                            {"role": "assistant", "content": f"답변 {i}"}]} for i in range(10)]


def jsonl(records: list[Any]) -> bytes:
    return ("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n").encode()


def _client(test_client: Any, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=test_client, max_retries=0)


@pytest.fixture
def oai(client: Any) -> openai.OpenAI:
    return _client(client)


def _dataset_count() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(Dataset)) or 0)


def test_a_file_is_a_chat_dataset_listed_retrieved_read_and_deleted(oai: openai.OpenAI, client: Any,
                                                                    settings: Any) -> None:
    content = jsonl(CHAT_LINES)
    created = oai.files.create(file=("train.jsonl", content), purpose="fine-tune")
    assert (created.object, created.purpose, created.status, created.filename) == (
        "file", "fine-tune", "processed", "train.jsonl")
    assert created.bytes == len(content) and created.id.startswith("file_")
    assert [f.id for f in oai.files.list()] == [created.id]
    assert oai.files.retrieve(created.id).bytes == len(content)
    assert oai.files.content(created.id).read() == content
    # The same row through the native API: a chat dataset whose report names the format.
    native = client.get(f"/datasets/{created.id}").json()
    assert native["task"] == "chat" and native["report"]["chat_format"] == "openai"
    assert sum(native["num_rows"].values()) == 10
    assert oai.files.delete(created.id).deleted is True
    with pytest.raises(openai.NotFoundError) as missing:
        oai.files.retrieve(created.id)
    assert missing.value.body["code"] == "file_not_found"  # type: ignore[index]
    assert _dataset_count() == 0 and not any(settings.datasets_dir.iterdir())


def test_a_bad_line_is_an_openai_error_naming_it_and_nothing_stays(oai: openai.OpenAI, settings: Any) -> None:
    bad = [*CHAT_LINES[:2], {"messages": [{"role": "user", "content": "혼자"}]}, *CHAT_LINES[2:]]
    content = jsonl(bad[:2]) + b"\n" + jsonl(bad[2:])  # a blank line: line 4 is the third record
    with pytest.raises(openai.BadRequestError) as error:
        oai.files.create(file=("bad.jsonl", content), purpose="fine-tune")
    assert error.value.status_code == 400
    body = error.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", "file", "invalid_file")
    assert "line 4: the last turn must be the assistant's" in body["message"]
    with pytest.raises(openai.BadRequestError) as broken:
        oai.files.create(file=("broken.jsonl", b'{"messages": [}\n'), purpose="fine-tune")
    assert "line 1 of 'broken.jsonl' is not valid JSON" in broken.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as purpose:
        oai.files.create(file=("train.jsonl", jsonl(CHAT_LINES)), purpose="batch")
    assert purpose.value.body["param"] == "purpose"  # type: ignore[index]
    assert _dataset_count() == 0 and not any(settings.datasets_dir.iterdir())


def test_job_parameters_are_checked_with_openai_errors(oai: openai.OpenAI, tmp_path: Path) -> None:
    file_id = oai.files.create(file=("train.jsonl", jsonl(CHAT_LINES)), purpose="fine-tune").id
    with pytest.raises(openai.BadRequestError) as bad:
        oai.fine_tuning.jobs.create(model="x", training_file=file_id,
                                    method={"type": "supervised",
                                            "supervised": {"hyperparameters": {"n_epochs": 0}}})
    assert bad.value.body["param"] == "method.supervised.hyperparameters.n_epochs"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as dpo:
        oai.fine_tuning.jobs.create(model="x", training_file=file_id, method={"type": "dpo"})
    assert dpo.value.body["param"] == "method.type"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as wandb:
        oai.fine_tuning.jobs.create(model="x", training_file=file_id,
                                    integrations=[{"type": "wandb", "wandb": {"project": "p"}}])
    assert wandb.value.body["param"] == "integrations"  # type: ignore[index]
    assert "not supported" in wandb.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as missing:
        oai.fine_tuning.jobs.create(model="x", training_file="file_nope")
    assert missing.value.body["param"] == "training_file"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as model:
        oai.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=file_id)
    assert model.value.body["param"] == "model"  # type: ignore[index]
    assert "'gpt-4o-mini' is not in the local Hugging Face cache" in model.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        oai.fine_tuning.jobs.retrieve("job_nope")
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_chat_completions_refuse_what_they_cannot_honour(oai: openai.OpenAI, tmp_path: Path) -> None:
    with session_scope() as session:
        row = TunedModel(base_model="x", task="chat", labels=[], metrics={}, path=str(tmp_path / "none"))
        classifier = TunedModel(base_model="x", task="single_label", labels=["a", "b"], metrics={},
                                path=str(tmp_path / "none"))
        session.add_all([row, classifier])
        session.flush()
        model_id, classifier_id = row.id, classifier.id
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as unknown:
        oai.chat.completions.create(model="mdl_nope", messages=messages)
    assert (unknown.value.body["code"], unknown.value.body["param"]) == ("model_not_found", "model")  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model=classifier_id, messages=messages)
    with pytest.raises(openai.NotFoundError):  # an ft: name that is not this model's
        oai.chat.completions.create(model=f"ft:x:y:{model_id}", messages=messages)
    # A checkpoint's name (as /checkpoints lists it) that has nothing to serve: the answer says why
    # and names what to use (a LoRA checkpoint that is there is served: tests/integration).
    with session_scope() as session:
        job = Job(base_model="x", task="chat", state="succeeded", hyperparameters={}, model_id=model_id)
        running = Job(base_model="x", task="chat", state="running", hyperparameters={})
        session.add_all([job, running])
        session.flush()
        job_id, running_id = job.id, running.id
    with pytest.raises(openai.NotFoundError) as checkpoint:
        oai.chat.completions.create(model=f"ft:x::{job_id}:ckpt-step-5", messages=messages)
    assert checkpoint.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert checkpoint.value.body["message"] == (  # type: ignore[index]
        f"The model 'ft:x::{job_id}:ckpt-step-5' is a checkpoint of fine-tuning job {job_id}: the job has "
        f"no checkpoint at step 5; use 'ft:x::{model_id}', the job's fine_tuned_model.")
    with session_scope() as session:  # pruned: the row keeps its metrics, the files are gone
        session.add(Checkpoint(job_id=running_id, step=2, epoch=1.0, metrics={}, available=False,
                               path=str(tmp_path / "pruned")))
    with pytest.raises(openai.NotFoundError) as unfinished:
        oai.chat.completions.create(model=f"ft:x::{running_id}:ckpt-step-2", messages=messages)
    assert unfinished.value.body["message"] == (  # type: ignore[index]
        f"The model 'ft:x::{running_id}:ckpt-step-2' is a checkpoint of fine-tuning job {running_id}: the "
        "checkpoint at step 2 was pruned (a running job keeps its best and TUNESERVE_KEEP_LAST_CHECKPOINTS "
        "more, a succeeded one TUNESERVE_KEEP_CHECKPOINTS_AFTER_SUCCESS); its metrics are kept, its weights "
        f"are not; GET /v1/fine_tuning/jobs/{running_id}/checkpoints lists the job's checkpoints.")
    full = tmp_path / "full-step-4"  # a full fine-tune's checkpoint: the whole model, not an adapter
    full.mkdir()
    (full / "tuneserve.json").write_text('{"task": "chat", "adapter": false}')
    with session_scope() as session:
        session.add(Checkpoint(job_id=running_id, step=4, epoch=2.0, metrics={}, path=str(full)))
    with pytest.raises(openai.NotFoundError) as whole:
        oai.chat.completions.create(model=f"ft:x::{running_id}:ckpt-step-4", messages=messages)
    assert "a full fine-tune's checkpoint" in whole.value.body["message"]  # type: ignore[index]
    assert f"GET /jobs/{running_id}/checkpoints gives its directory" in whole.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as other_name:  # the job's id under another base's name
        oai.chat.completions.create(model=f"ft:y::{running_id}:ckpt-step-2", messages=messages)
    assert "does not exist" in other_name.value.body["message"]  # type: ignore[index]
    refused: list[tuple[dict[str, Any], str]] = [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}}},
         "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"extra_body": {"best_of": 2}}, "best_of"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"temperature": 5}, "temperature"),
    ]
    for extra, param in refused:
        with pytest.raises(openai.BadRequestError) as error:
            oai.chat.completions.create(model=model_id, messages=messages, **extra)
        assert error.value.body["param"] == param, error.value.body  # type: ignore[index]
        if param in ("tools", "response_format", "logprobs", "presence_penalty", "best_of"):
            assert "not support" in error.value.body["message"]  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as last:
        oai.chat.completions.create(model=model_id, messages=[{"role": "assistant", "content": "hi"}])
    assert last.value.body["param"] == "messages"  # type: ignore[index]
    # A real model id whose files are gone is a 409, not a 500; so is one whose files are incomplete
    # (as a checkpoint is while the worker rotates it away).
    with pytest.raises(openai.ConflictError):
        oai.chat.completions.create(model=model_id, messages=messages)
    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "tuneserve.json").write_text('{"task": "chat", "adapter": false}')
    with session_scope() as session:
        session.execute(update(TunedModel).where(TunedModel.id == model_id).values(path=str(incomplete)))
    with pytest.raises(openai.ConflictError) as broken:
        oai.chat.completions.create(model=model_id, messages=messages)
    assert f"the files of model '{model_id}' could not be loaded" in broken.value.body["message"]  # type: ignore[index]
    assert [m.id for m in oai.models.list()] == [model_id]
    assert oai.models.retrieve(model_id).object == "model"


def test_the_openapi_document_includes_the_v1_routes(client: Any) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content", "/v1/fine_tuning/jobs",
                 "/v1/fine_tuning/jobs/{fine_tuning_job_id}/events",
                 "/v1/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
                 "/v1/fine_tuning/jobs/{fine_tuning_job_id}/pause",
                 "/v1/fine_tuning/jobs/{fine_tuning_job_id}/resume",
                 "/v1/chat/completions", "/v1/models", "/v1/models/{model}"):
        assert path in paths, path
    error = paths["/v1/chat/completions"]["post"]["responses"]["400"]["content"]["application/json"]["schema"]
    assert error["$ref"].endswith("/OpenAIErrorOut")


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Any:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.migrate import upgrade_head

    configure(monkeypatch, tmp_path, database_url, auth="on")
    from core.settings import get_settings

    upgrade_head(get_settings().database_url)
    with session_scope() as session:
        keys = {name: create_key(session, name=name)[1] for name in ("alice", "bob")}
    with TestClient(create_app()) as test_client:
        yield test_client, keys


def test_keys_are_bearer_tokens_and_another_keys_objects_are_404(keyed: Any, tmp_path: Path) -> None:
    test_client, keys = keyed
    alice, bob = _client(test_client, keys["alice"]), _client(test_client, keys["bob"])
    with pytest.raises(openai.AuthenticationError) as unauthenticated:
        _client(test_client, "key_nope.secret").files.list()
    assert unauthenticated.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    file_id = alice.files.create(file=("train.jsonl", jsonl(CHAT_LINES)), purpose="fine-tune").id
    alice_key = keys["alice"].partition(".")[0]
    with session_scope() as session:
        job = Job(tenant_id=alice_key, dataset_id=file_id, base_model="/m", task="chat", state="succeeded",
                  hyperparameters={"epochs": 1}, model_id=None)
        model = TunedModel(tenant_id=alice_key, base_model="/m", task="chat", labels=[], metrics={},
                           path=str(tmp_path / "none"))
        session.add_all([job, model])
        session.flush()
        job_id, model_id = job.id, model.id
    assert [f.id for f in alice.files.list()] == [file_id] and list(bob.files.list()) == []
    assert [j.id for j in alice.fine_tuning.jobs.list()] == [job_id]
    assert list(bob.fine_tuning.jobs.list()) == []
    assert [m.id for m in alice.models.list()] == [model_id] and list(bob.models.list()) == []
    for call in (lambda: bob.files.retrieve(file_id), lambda: bob.files.content(file_id),
                 lambda: bob.files.delete(file_id), lambda: bob.fine_tuning.jobs.retrieve(job_id),
                 lambda: bob.fine_tuning.jobs.cancel(job_id),
                 lambda: bob.fine_tuning.jobs.list_events(job_id),
                 lambda: bob.fine_tuning.jobs.checkpoints.list(job_id),
                 lambda: bob.fine_tuning.jobs.create(model="/m", training_file=file_id),
                 lambda: bob.models.retrieve(model_id),
                 lambda: bob.chat.completions.create(model=model_id,
                                                     messages=[{"role": "user", "content": "x"}])):
        with pytest.raises(openai.NotFoundError):
            call()
    assert alice.files.retrieve(file_id).id == file_id


def test_an_auto_multiplier_is_the_range_test_and_reported_once_it_chose(oai: openai.OpenAI, client: Any,
                                                                         tiny_chat_lm_dir: Path) -> None:
    file_id = oai.files.create(file=("train.jsonl", jsonl(CHAT_LINES)), purpose="fine-tune").id
    job = oai.fine_tuning.jobs.create(model=str(tiny_chat_lm_dir), training_file=file_id)
    # Until the worker's range test has run, the multiplier is "auto", as OpenAI shows it unresolved.
    assert job.hyperparameters.learning_rate_multiplier == "auto"
    assert job.method.supervised.hyperparameters.learning_rate_multiplier == "auto"  # type: ignore[union-attr]
    native = client.get(f"/jobs/{job.id}").json()
    assert native["hyperparameters"]["learning_rate"] == "auto"
    events = client.get(f"/jobs/{job.id}/events").json()
    assert any("range test chooses the rate" in e["message"]
               for e in events if e["kind"] == "hyperparameters")
    # The range test chose 3e-4 (what the worker's sink writes with its lr_range_test event):
    # the multiplier is then that rate over chat's default 2e-4.
    with session_scope() as session:
        row = session.get(Job, job.id)
        assert row is not None
        row.chosen_learning_rate = 3e-4
    chosen = oai.fine_tuning.jobs.retrieve(job.id).hyperparameters
    assert chosen.learning_rate_multiplier == pytest.approx(1.5)
    # A number is that multiple of the default, with no range test.
    fixed = oai.fine_tuning.jobs.create(model=str(tiny_chat_lm_dir), training_file=file_id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 2}}})
    assert fixed.hyperparameters.learning_rate_multiplier == 2
    assert client.get(f"/jobs/{fixed.id}").json()["hyperparameters"]["learning_rate"] == pytest.approx(4e-4)


def test_a_served_checkpoint_is_unloaded_when_its_job_is_deleted(
    oai: openai.OpenAI, client: Any, tiny_chat_lm_dir: Path, tmp_path: Path,
) -> None:
    from app.serving.generations import checkpoint_runtime_id
    from tests.conftest import make_chat_adapter

    adapter = make_chat_adapter(tiny_chat_lm_dir, tmp_path / "checkpoints" / "step-2", seed=1)
    with session_scope() as session:
        job = Job(base_model=str(tiny_chat_lm_dir), task="chat", state="running", hyperparameters={})
        session.add(job)
        session.flush()
        session.add(Checkpoint(job_id=job.id, step=2, epoch=1.0, metrics={}, path=str(adapter)))
        job_id = job.id
    name = f"ft:{tiny_chat_lm_dir.name}::{job_id}:ckpt-step-2"
    reply = oai.chat.completions.create(model=name, messages=[{"role": "user", "content": "안녕"}],
                                        max_tokens=3, temperature=0)
    assert reply.model == name and reply.usage is not None and reply.usage.completion_tokens >= 1
    models = client.app.state.generations.models()
    runtime = models.cached(checkpoint_runtime_id(job_id, 2))
    assert runtime is not None and runtime.adapter in runtime.base.adapters
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(state="succeeded"))
    assert client.delete(f"/jobs/{job_id}").status_code == 204
    assert models.cached(checkpoint_runtime_id(job_id, 2)) is None
    assert runtime.adapter not in runtime.base.adapters  # its weights left the shared base
