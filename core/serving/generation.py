"""Chat models for /generate and the base-vs-tuned report: a base loaded once, LoRA adapters on it.

A LoRA model is its base plus a few MB of adapter: every adapter of one base shares one copy of
the base's weights (peft's named adapters on one PeftModel), and each row of a batch names its
adapter (core/serving/engine.py decodes). A fully fine-tuned chat model is loaded on its own.

Imports torch and transformers: the API imports this module on the first /generate only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from core import store
from core.chat import with_system_prompt
from core.settings import get_settings

# A tokenizer with no template of its own was trained with this one (worker/families/chat/task.py): the same
# text must reach the model at serving time, so the template is saved with the tokenizer.


def _load_options() -> dict[str, Any]:
    return store.load_options(get_settings().trust_remote_code)  # safetensors only, as everywhere


def _tokenizer_options() -> dict[str, Any]:
    return store.tokenizer_options(get_settings().trust_remote_code)


@dataclass(frozen=True)
class ChatSpec:
    """What serving needs to know of a tuned chat model (from its row and tuneserve.json)."""

    model_id: str
    path: Path                 # the tuned model's directory (an adapter or a full model)
    adapter: bool
    base_path: str | None      # the base's directory or hub name (adapters only)
    system_prompt: str | None = None
    # The base as the adapter trained on it: none | 8bit | 4bit. A quantized base is loaded
    # quantized the same way (the memory plan chose it because the unquantized one does not fit).
    quantization: str = "none"


def read_spec(model_id: str, path: Path) -> ChatSpec:
    meta = store.read_model_meta(path)
    adapter = (path / "adapter_config.json").is_file()
    base = store.resolve_base_model(str(meta["base_model"])) if adapter and meta.get("base_model") else None
    if adapter and base is None:
        import json

        base = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    return ChatSpec(model_id=model_id, path=path, adapter=adapter, base_path=base,
                    system_prompt=meta.get("system_prompt"),
                    quantization=str(meta.get("quantization") or "none") if adapter else "none")


class LoadedBase:
    """One causal LM in memory, with any number of named LoRA adapters on it."""

    def __init__(self, path: str, device: str | None = None, quantization: str = "none") -> None:
        from core.planning.quantize import quantized_load_options
        from core.serving.runtime import serving_device

        self.path, self.quantization = path, quantization
        target = serving_device(device)
        if quantization in ("8bit", "4bit"):
            # bitsandbytes quantizes each weight as it lands on the device: no .to() afterwards.
            options = quantized_load_options(quantization, torch.device(target))
            self.model: Any = AutoModelForCausalLM.from_pretrained(path, **_load_options(), **options).eval()
        else:
            model: Any = AutoModelForCausalLM.from_pretrained(path, **_load_options())
            self.model = model.to(target).eval()
        self.adapters: set[str] = set()
        # Held by the engine around each decoding step and by adapter loading/unloading: peft
        # edits the modules an adapter lives in, which must not happen mid-forward.
        self.lock = threading.Lock()

    def add_adapter(self, name: str, adapter_dir: Path) -> None:
        from peft import PeftModel

        if name in self.adapters:
            return
        if not self.adapters:
            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name).eval()
        else:
            self.model.load_adapter(str(adapter_dir), adapter_name=name)
        self.adapters.add(name)

    def drop_adapter(self, name: str) -> None:
        with self.lock:
            if name in self.adapters:
                self.model.delete_adapter(name)
                self.adapters.discard(name)

    @property
    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.model.parameters(), *self.model.buffers()])


class ChatRuntime:
    """Tokenizer + base + (optional) adapter name: what one tuned chat model generates with."""

    def __init__(self, base: LoadedBase, tokenizer: Any, adapter: str | None, system_prompt: str | None,
                 eos_ids: list[int]) -> None:
        self.base, self.tokenizer, self.adapter = base, tokenizer, adapter
        self.system_prompt, self.eos_ids = system_prompt, eos_ids

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        messages = with_system_prompt(messages, self.system_prompt)
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_ids_of(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a reply: the generation config's (Llama 3 lists several) and the
    tokenizer's EOS, which ends each turn in tuneserve's default template."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


class ChatModels:
    """Loaded bases by path; a tuned chat model resolves to (base, adapter name, tokenizer)."""

    def __init__(self, device: str | None = None) -> None:
        """`device`: "auto" (a GPU when torch sees one), "cpu", "cuda:N"; None: cpu."""
        self.device = device
        self._bases: dict[str, LoadedBase] = {}
        self._runtimes: dict[str, ChatRuntime] = {}
        self._lock = threading.Lock()

    def cached(self, model_id: str) -> ChatRuntime | None:
        """The loaded runtime of a model, or None (no file is read)."""
        return self._runtimes.get(model_id)

    def runtime(self, spec: ChatSpec) -> ChatRuntime:
        with self._lock:
            found = self._runtimes.get(spec.model_id)
            if found is not None:
                return found
            tokenizer = AutoTokenizer.from_pretrained(str(spec.path), **_tokenizer_options())
            if spec.adapter:
                assert spec.base_path is not None
                # Every adapter of one base in one precision shares one copy of it.
                key = spec.base_path if spec.quantization == "none" \
                    else f"{spec.base_path}@{spec.quantization}"
                base = self._bases.get(key)
                if base is None:
                    base = self._bases[key] = LoadedBase(spec.base_path, self.device, spec.quantization)
                with base.lock:
                    base.add_adapter(spec.model_id, spec.path)
                adapter: str | None = spec.model_id
            else:
                base = self._bases[str(spec.path)] = LoadedBase(str(spec.path), self.device)
                adapter = None
            store.ensure_pad_token(tokenizer)
            runtime = ChatRuntime(base, tokenizer, adapter, spec.system_prompt,
                                  eos_ids_of(base.model, tokenizer))
            self._runtimes[spec.model_id] = runtime
            return runtime

    def evict(self, model_id: str) -> bool:
        with self._lock:
            runtime = self._runtimes.pop(model_id, None)
            if runtime is None:
                return False
            if runtime.adapter is not None:
                runtime.base.drop_adapter(runtime.adapter)
            users = [r for r in self._runtimes.values() if r.base is runtime.base]
            if not users:
                self._bases = {k: b for k, b in self._bases.items() if b is not runtime.base}
            return True

    def loaded_bases(self) -> list[str]:
        return list(self._bases)


def merge_to_directory(spec: ChatSpec, destination: Path) -> str:
    """The adapter merged into its base: a plain model directory `pipeline("text-generation")`
    loads with no peft (the tokenizer, chat template included, beside it). Returns what it was
    merged into, in words.

    An adapter trained on a 4-bit or 8-bit base is merged into the base reloaded in bf16, never
    into the quantized weights: rounding the merged sum back to 4 bits would lose the adapter's
    small updates, and a quantized checkpoint is not what `pipeline` users expect."""
    from peft import PeftModel

    assert spec.adapter and spec.base_path is not None
    quantized = spec.quantization in ("8bit", "4bit")
    dtype = {"dtype": torch.bfloat16} if quantized else {}
    base = AutoModelForCausalLM.from_pretrained(spec.base_path, **_load_options(), **dtype)
    merged = PeftModel.from_pretrained(base, str(spec.path)).merge_and_unload()
    merged.save_pretrained(destination)
    AutoTokenizer.from_pretrained(str(spec.path), **_tokenizer_options()).save_pretrained(destination)
    merged_into = (f"the base reloaded in bf16 (the adapter trained on a {spec.quantization} base; its "
                   "quantized weights are not merged into)" if quantized else "the base in its own dtype")
    meta = store.read_model_meta(spec.path) | {"adapter": False, "merged_from": spec.model_id,
                                               "merged_into": merged_into, "quantization": "none"}
    store.write_model_meta(destination, meta)
    return merged_into
