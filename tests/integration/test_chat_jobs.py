"""Chat fine-tuning through the HTTP API and a real Celery worker, on a tiny random Llama: upload the
Korean Q/A CSV, LoRA training killed mid-run and resumed by a new worker, per-evaluation token
accuracy and perplexity, the base-vs-tuned generation report, /generate plain and streamed, the
adapter and the merged model downloaded (a plain `pipeline` loads the merged one), and cancel."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES
from tests.integration.conftest import upload, wait_for_job, wait_until

pytestmark = pytest.mark.slow

CHAT_HP = {"max_steps": 8, "batch_size": 8, "learning_rate": 3e-3, "max_seq_length": 64, "logging_steps": 1,
           "warmup_ratio": 0.0, "eval_strategy": "steps", "eval_steps": 2,
           "system_prompt": "친절하게 답하세요"}


def _sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def _untar(body: bytes, destination: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as archive:
        archive.extractall(destination, filter="data")
    [root] = list(destination.iterdir())
    return root


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_chat_lora_job_end_to_end(stack: Any, tmp_path: Path, tiny_chat_lm_dir: Path) -> None:
    # Slow steps so the kill lands mid-run; short lease so the second worker takes over quickly.
    client, start_worker = stack(fault_step_delay_s=0.4, job_lease_s=3, heartbeat_interval_s=0.5,
                                 compare_max_prompts=6, compare_max_new_tokens=8)
    dataset = upload(client, FIXTURES / "korean_chatbot_qa_slice.csv", task="chat")
    assert dataset["task"] == "chat" and dataset["num_rows"]["train"] == 64
    resp = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": str(tiny_chat_lm_dir),
                                      "hyperparameters": CHAT_HP})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]

    first = start_worker()
    wait_until(lambda: any(c["step"] >= 2 for c in client.get(f"/jobs/{job_id}/checkpoints").json()),
               what="a first checkpoint")
    wait_until(lambda: client.get(f"/jobs/{job_id}").json()["step"] >= 3, what="a step past it")
    first.kill()
    second = start_worker()
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, worker=second)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["step"] == job["total_steps"] == 8

    events = client.get(f"/jobs/{job_id}/events").json()
    kinds = [e["kind"] for e in events]
    assert "resumed" in kinds and "lora" in kinds and "comparison" in kinds
    lora = next(e for e in events if e["kind"] == "lora")["data"]
    assert lora["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"] and lora["r"] == 16

    metrics = client.get(f"/jobs/{job_id}/metrics").json()
    train_steps = [p["step"] for p in metrics["train"]]
    assert train_steps == list(range(1, 9))  # each step once: the resumed attempt replaced its points
    assert all({"loss", "learning_rate"} <= set(p) for p in metrics["train"])
    assert [p["step"] for p in metrics["eval"]] == [2, 4, 6, 8]
    for point in metrics["eval"]:
        assert {"loss", "token_accuracy", "perplexity", "train_loss"} <= set(point)
    assert metrics["summary"]["metric"] == "loss" and metrics["summary"]["greater_is_better"] is False
    comparison = metrics["comparison"]
    assert comparison["prompts"] == 6 and comparison["bleu_tokenize"] == "char"
    for side in ("base", "tuned"):
        assert set(comparison[side]) == {"bleu", "chrf", "cosine_similarity"}
        assert -1.0 <= comparison[side]["cosine_similarity"] <= 1.0
    assert len(comparison["examples"]) == 5 and {"prompt", "reference", "base", "tuned"} <= set(
        comparison["examples"][0])

    model_id = job["model_id"]
    model = client.get(f"/models/{model_id}").json()
    assert model["task"] == "chat"
    messages = [{"role": "user", "content": "12시 땡!"}]
    reply = client.post("/generate", json={"model_id": model_id, "messages": messages, "max_new_tokens": 6,
                                           "temperature": 0})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["message"]["role"] == "assistant" and body["usage"]["completion_tokens"] <= 6
    assert body["usage"]["prompt_tokens"] > 10  # the system prompt the job trained with is in it
    streamed = client.post("/generate", json={"model_id": model_id, "messages": messages, "max_new_tokens": 6,
                                              "temperature": 0, "stream": True})
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    sse = _sse(streamed.text)
    assert sse[-1][0] == "done" and all(kind == "token" for kind, _ in sse[:-1])
    assert "".join(data["text"] for _, data in sse[:-1]) == sse[-1][1]["message"]["content"]
    assert sse[-1][1]["message"]["content"] == body["message"]["content"]  # greedy: the same reply
    bad = client.post("/generate", json={"model_id": model_id, "messages": messages,
                                         "max_new_tokens": 100_000})
    assert bad.status_code == 422 and "TUNESERVE_GENERATE_MAX_NEW_TOKENS" in bad.json()["detail"]
    assert client.post("/predict", json={"model_id": model_id, "texts": ["x"]}).status_code == 422

    adapter = _untar(client.get(f"/models/{model_id}/download").content, tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    merged_resp = client.get(f"/models/{model_id}/download", params={"merged": "true"})
    assert merged_resp.status_code == 200, merged_resp.text
    merged = _untar(merged_resp.content, tmp_path / "merged")
    assert not (merged / "adapter_config.json").exists()
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(merged))
    out = generator([{"role": "user", "content": "12시 땡!"}], max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"][-1]["role"] == "assistant"

    # Cancel: the same loop, a chat job stops on request and registers nothing.
    resp = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": str(tiny_chat_lm_dir),
                                      "hyperparameters": {**CHAT_HP, "max_steps": 40}})
    cancel_id = resp.json()["id"]
    wait_until(lambda: client.get(f"/jobs/{cancel_id}").json()["step"] >= 1, what="step 1")
    assert client.post(f"/jobs/{cancel_id}/cancel").status_code == 200
    cancelled = wait_for_job(client, cancel_id, {"cancelled", "succeeded", "failed"}, timeout_s=60,
                             worker=second)
    assert cancelled["state"] == "cancelled" and cancelled["model_id"] is None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_qlora_job_end_to_end(stack: Any, tmp_path: Path, tiny_qlora_lm_dir: Path) -> None:
    """quantization 4bit through the API and real workers on the CPU: the memory plan on the job,
    a SIGKILL mid-run resumed on the same 4-bit base, /generate on the quantized base, and the
    merged download merged into the base reloaded in bf16, which a plain `pipeline` loads."""
    client, start_worker = stack(fault_step_delay_s=0.4, job_lease_s=3, heartbeat_interval_s=0.5,
                                 compare_max_prompts=3, compare_max_new_tokens=4)
    dataset = upload(client, FIXTURES / "korean_chatbot_qa_slice.csv", task="chat")
    hp = {**CHAT_HP, "max_steps": 6, "quantization": "4bit"}
    resp = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": str(tiny_qlora_lm_dir),
                                      "hyperparameters": hp})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    first = start_worker()
    wait_until(lambda: any(c["step"] >= 2 for c in client.get(f"/jobs/{job_id}/checkpoints").json()),
               what="a first checkpoint")
    first.kill()
    second = start_worker()
    job = wait_for_job(client, job_id, {"succeeded", "failed"}, worker=second)
    assert job["state"] == "succeeded", job["error"]
    assert job["attempts"] == 2 and job["step"] == 6
    plan = job["memory_plan"]
    assert plan["fits"] and plan["choice"]["quantization"] == "4bit"
    assert plan["reasons"]["quantization"].startswith("set by the job")
    events = client.get(f"/jobs/{job_id}/events").json()
    planned = [e for e in events if e["kind"] == "memory_plan"]
    assert len(planned) == 2 and planned[1]["message"].startswith("Kept the first attempt's memory plan")
    assert "resumed" in [e["kind"] for e in events]

    model_id = job["model_id"]
    reply = client.post("/generate", json={"model_id": model_id, "max_new_tokens": 4, "temperature": 0,
                                           "messages": [{"role": "user", "content": "12시 땡!"}]})
    assert reply.status_code == 200, reply.text
    merged_resp = client.get(f"/models/{model_id}/download", params={"merged": "true"})
    assert merged_resp.status_code == 200, merged_resp.text
    assert "reloaded in bf16" in merged_resp.headers["x-tuneserve-merged-into"]
    merged = _untar(merged_resp.content, tmp_path / "merged")
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"
    assert "reloaded in bf16" in json.loads((merged / "tuneserve.json").read_text())["merged_into"]
    from transformers import pipeline

    generator = pipeline("text-generation", model=str(merged))
    out = generator([{"role": "user", "content": "12시 땡!"}], max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"][-1]["role"] == "assistant"
    second.kill()

    # Under a cap between the 8-bit and the 4-bit plan, auto picks 4-bit by itself, and a job that
    # insists on the unquantized base fails at once with the numbers.
    import torch

    from core.catalogue import with_job_defaults
    from core.jobspec import Hyperparameters
    from core.planning import PlanRequest, measure, plan_for_source

    hp_auto = with_job_defaults(Hyperparameters(**CHAT_HP), "chat")
    request = PlanRequest.from_hyperparameters(hp_auto, chat=True)
    options = plan_for_source("tiny", str(tiny_qlora_lm_dir), request, measure(torch.device("cpu"), None)
                              ).to_dict()["options"]

    def least(quantization: str) -> float:
        return min(o["total_gib"] for o in options if o["quantization"] == quantization)

    assert least("4bit") < least("8bit") < least("none")
    cap = (least("8bit") + least("4bit")) / 2
    client, start_worker = stack(device_memory_gib=cap, fault_step_delay_s=0.4)
    worker = start_worker()
    auto = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": str(tiny_qlora_lm_dir),
                                      "hyperparameters": {**CHAT_HP, "max_steps": 40}}).json()["id"]
    wait_until(lambda: client.get(f"/jobs/{auto}").json()["memory_plan"] is not None, what="the plan")
    chosen = client.get(f"/jobs/{auto}").json()["memory_plan"]
    assert chosen["choice"]["quantization"] == "4bit" and "8-bit (LLM.int8) needs" in chosen["reasons"][
        "quantization"]
    client.post(f"/jobs/{auto}/cancel")
    wait_for_job(client, auto, {"cancelled", "succeeded", "failed"}, worker=worker)
    none = client.post("/jobs", json={"dataset_id": dataset["id"], "base_model": str(tiny_qlora_lm_dir),
                                      "hyperparameters": {**CHAT_HP, "quantization": "none"}}).json()["id"]
    failed = wait_for_job(client, none, {"succeeded", "failed"}, worker=worker)
    assert failed["state"] == "failed" and failed["error_kind"] == "environment"
    assert "does not fit" in failed["error"] and "needs ≥" in failed["error"]
    assert "GiB free" in failed["error"]
    assert failed["step"] == 0 and client.get(f"/jobs/{none}/checkpoints").json() == []
