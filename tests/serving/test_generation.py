"""Chat generation on a tiny random Llama (2 layers, hidden 32) with a BPE tokenizer: what a
runtime generates is what transformers' own generate gives for the same prompt, adapters of one
base share it, and a merged adapter generates as the adapter did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core import store
from core.serving.engine import GenerationParams, Reply, generate_many
from core.serving.generation import (
    ChatModels,
    ChatRuntime,
    ChatSpec,
    eos_ids_of,
    merge_to_directory,
    read_spec,
)
from core.settings import Settings

QUESTION = [{"role": "user", "content": "오늘 날씨 어때?"}]


@pytest.fixture(autouse=True)
def _settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str) -> None:
    from tests.conftest import configure

    configure(monkeypatch, tmp_path, sqlite_url)  # trust_remote_code stays off
    torch.set_num_threads(1)


def _full_model(tiny_chat_lm_dir: Path, directory: Path, system_prompt: str | None = None) -> ChatSpec:
    """A fully fine-tuned chat model as the worker registers it: the model, its tokenizer, meta."""
    shutil.copytree(tiny_chat_lm_dir, directory)
    store.write_model_meta(directory, {"task": "chat", "adapter": False, "base_model": "tiny-llama",
                                       "system_prompt": system_prompt})
    return read_spec("mdl_full", directory)


def _adapter(base_dir: Path, directory: Path, seed: int) -> Path:
    """A LoRA adapter on the base with random (non-zero) B matrices, so it changes the output."""
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8,
                                            target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    model.save_pretrained(str(directory))
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(directory)
    store.write_model_meta(directory, {"task": "chat", "adapter": True, "base_model": str(base_dir)})
    return directory


def _generate(runtime: Any, ids: list[int], max_new_tokens: int, *, temperature: float = 0.0,
              top_p: float = 1.0, seed: int | None = None, base_only: bool = False) -> Reply:
    """One reply through the serving engine, as /generate and the report produce it."""
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    return generate_many(runtime, [ids], params, Settings(generate_max_wait_ms=1.0), base_only=base_only)[0]


def _templated_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt as the chat template writes it, tokenized with no extra special tokens."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _reference(model_dir: str | Path, ids: list[int], max_new_tokens: int) -> list[int]:
    """The new tokens transformers' greedy generate gives, on a model loaded on its own."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    inputs = torch.tensor([ids])
    with torch.inference_mode():
        out = model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=eos_ids_of(model, tokenizer),
                             pad_token_id=tokenizer.pad_token_id)
    return list(out[0, len(ids):].tolist())


def test_greedy_generation_is_transformers_generate_on_the_same_prompt(tiny_chat_lm_dir: Path,
                                                                      tmp_path: Path) -> None:
    spec = _full_model(tiny_chat_lm_dir, tmp_path / "full")
    assert (spec.adapter, spec.base_path) == (False, None)
    runtime = ChatModels().runtime(spec)
    ids = runtime.prompt_ids(QUESTION)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_chat_lm_dir))
    assert ids == _templated_ids(tokenizer, QUESTION)

    reply = _generate(runtime, ids, 6)
    expected = _reference(tiny_chat_lm_dir, ids, 6)
    assert reply.text == tokenizer.decode(expected, skip_special_tokens=True)
    assert (reply.prompt_tokens, reply.completion_tokens) == (len(ids), len(expected))
    # A random model does not end its turn in 6 tokens: it was cut at the limit.
    assert expected[-1] not in runtime.eos_ids and reply.finish_reason == "length"


def test_a_reply_that_reaches_an_end_token_stops_there(tiny_chat_lm_dir: Path, tmp_path: Path) -> None:
    runtime = ChatModels().runtime(_full_model(tiny_chat_lm_dir, tmp_path / "full"))
    ids = runtime.prompt_ids(QUESTION)
    first = _generate(runtime, ids, 1)
    first_id = _reference(tiny_chat_lm_dir, ids, 1)[0]
    assert first.finish_reason == "length"
    # The same model, with its first greedy token declared an end token: it stops after it.
    stopping = ChatRuntime(runtime.base, runtime.tokenizer, None, None, eos_ids=[first_id])
    reply = _generate(stopping, ids, 8)
    # The end token itself is not part of the reply's text (the engine counts only what it shows).
    assert reply.finish_reason == "stop" and reply.completion_tokens == 0 and reply.text == ""


def test_the_system_prompt_goes_first_unless_the_conversation_has_one(tiny_chat_lm_dir: Path,
                                                                    tmp_path: Path) -> None:
    spec = _full_model(tiny_chat_lm_dir, tmp_path / "full", system_prompt="존댓말로 답하세요.")
    assert spec.system_prompt == "존댓말로 답하세요."
    runtime = ChatModels().runtime(spec)
    with_default = [{"role": "system", "content": "존댓말로 답하세요."}, *QUESTION]
    own = [{"role": "system", "content": "짧게."}, *QUESTION]
    assert runtime.prompt_ids(QUESTION) == _templated_ids(runtime.tokenizer, with_default)
    assert runtime.prompt_ids(own) == _templated_ids(runtime.tokenizer, own)
    assert runtime.prompt_ids(QUESTION) != _templated_ids(runtime.tokenizer, QUESTION)


def test_sampling_is_reproducible_under_a_seed_and_respects_the_limit(tiny_chat_lm_dir: Path,
                                                                     tmp_path: Path) -> None:
    runtime = ChatModels().runtime(_full_model(tiny_chat_lm_dir, tmp_path / "full"))
    ids = runtime.prompt_ids(QUESTION)
    replies = [_generate(runtime, ids, 5, temperature=1.5, top_p=0.9, seed=3) for _ in range(2)]
    assert replies[0] == replies[1]
    assert 1 <= replies[0].completion_tokens <= 5


def test_end_tokens_are_the_generation_configs_and_the_tokenizers(tiny_chat_lm_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(tiny_chat_lm_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_chat_lm_dir))
    assert eos_ids_of(model, tokenizer) == [tokenizer.eos_token_id]
    model.generation_config.eos_token_id = [7, tokenizer.eos_token_id, 5]  # Llama 3 lists several
    assert eos_ids_of(model, tokenizer) == sorted({5, 7, tokenizer.eos_token_id})


def test_adapters_of_one_base_share_it_and_each_changes_the_reply(tiny_chat_lm_dir: Path,
                                                                 tmp_path: Path) -> None:
    a = read_spec("mdl_a", _adapter(tiny_chat_lm_dir, tmp_path / "a", seed=1))
    b = read_spec("mdl_b", _adapter(tiny_chat_lm_dir, tmp_path / "b", seed=2))
    assert (a.adapter, a.base_path) == (True, str(tiny_chat_lm_dir))
    models = ChatModels()
    run_a, run_b = models.runtime(a), models.runtime(b)
    assert run_a.base is run_b.base and models.loaded_bases() == [str(tiny_chat_lm_dir)]
    assert models.runtime(a) is run_a  # loaded once

    ids = run_a.prompt_ids(QUESTION)
    base_ids = _reference(tiny_chat_lm_dir, ids, 8)
    # The base alone, under its two adapters, generates as the base loaded on its own.
    base_reply = _generate(run_a, ids, 8, base_only=True)
    assert base_reply.text == run_a.tokenizer.decode(base_ids, skip_special_tokens=True)
    # Each adapter switched in generates as it does merged into a base of its own.
    texts = {}
    for spec, runtime in ((a, run_a), (b, run_b)):
        merged = tmp_path / f"merged-{spec.model_id}"
        into = merge_to_directory(spec, merged)
        assert "bf16" not in into  # a full-precision base: merged as it is, not reloaded
        assert not (merged / "adapter_config.json").exists()
        assert store.read_model_meta(merged)["merged_from"] == spec.model_id
        texts[spec.model_id] = _generate(runtime, ids, 8).text
        merged_ids = _reference(merged, ids, 8)
        assert texts[spec.model_id] == run_a.tokenizer.decode(merged_ids, skip_special_tokens=True)
    assert len({base_reply.text, *texts.values()}) == 3

    # Evicting one adapter keeps the base for the other; evicting the last frees the base.
    assert models.evict("mdl_a") and not models.evict("mdl_a")
    assert models.loaded_bases() == [str(tiny_chat_lm_dir)] and run_b.base.adapters == {"mdl_b"}
    assert _generate(run_b, ids, 8).text == texts["mdl_b"]
    assert models.evict("mdl_b") and models.loaded_bases() == []


def test_an_adapter_without_a_recorded_base_uses_its_adapter_config(tiny_chat_lm_dir: Path,
                                                                   tmp_path: Path) -> None:
    directory = _adapter(tiny_chat_lm_dir, tmp_path / "a", seed=1)
    store.write_model_meta(directory, {"task": "chat", "adapter": True})
    config: dict[str, Any] = json.loads((directory / "adapter_config.json").read_text())
    assert read_spec("mdl_a", directory).base_path == config["base_model_name_or_path"]
